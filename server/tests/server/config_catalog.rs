//! A catalog of bad configurations for `kaelix serve`, each with the exact
//! diagnostics the loader prints: syntax, types, unknown keys, ranges,
//! contradictions between sections, and what this machine cannot do (a
//! fixed probe: 4 cores, 8 GiB, 100 GiB free, loopback only, port 4333
//! taken), from the file, the environment and flags.

use std::path::Path;
use std::sync::Arc;

use kaelix_config::reload::ReloadOutcome;
use kaelix_config::{ConfigLoader, FixedProbe, HotReloadManager, Phase, ReloadPolicy};
use kaelix_server::ServerConfig;

fn probe() -> FixedProbe {
    FixedProbe { busy: vec!["127.0.0.1:4333".parse().unwrap()], ..FixedProbe::default() }
}

/// Every diagnostic of loading `text` as `kaelix.toml` with `env`, one per line.
fn diagnostics(text: &str, env: &[(&str, &str)]) -> Result<Vec<String>, Vec<String>> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let loader = ConfigLoader::new().with_probe(Arc::new(probe())).with_env_vars("KAELIX", env);
    match loader.load_text::<ServerConfig>(Some(Path::new("kaelix.toml")), Some(text), Phase::Start) {
        Ok(loaded) => Ok(loaded.warnings.iter().map(|d| d.to_string()).collect()),
        Err(e) => Err(e.diagnostics.iter().map(|d| d.to_string()).collect()),
    }
}

const HASH: &str = "$2b$04$SMcX1ayNf6kAxsmzPbRG9OkAKXQyWZ0Ucd5tX7s2wT2ATeB6RvZEG";

/// (name, file, environment, the exact diagnostics)
type Entry = (&'static str, String, Vec<(&'static str, &'static str)>, Vec<&'static str>);

fn catalog() -> Vec<Entry> {
    let t = |s: &str| s.to_owned();
    vec![
        // --- syntax
        (
            "unclosed table header",
            t("[limits\nmax_payload = 1\n"),
            vec![],
            vec!["kaelix.toml:1:8: unclosed table, expected `]`"],
        ),
        (
            "missing value",
            t("server_name =\n"),
            vec![],
            vec!["kaelix.toml:1:14: string values must be quoted, expected literal string"],
        ),
        (
            "unterminated string",
            t("server_name = \"abc\n"),
            vec![],
            vec!["kaelix.toml:1:19: invalid basic string, expected `\"`"],
        ),
        (
            "duplicate key",
            t("server_name = \"a\"\nserver_name = \"b\"\n"),
            vec![],
            vec!["kaelix.toml:2:1: duplicate key"],
        ),
        ("duplicate table", t("[limits]\n[limits]\n"), vec![], vec!["kaelix.toml:2:2: duplicate key"]),
        // --- types
        (
            "string for an integer",
            t("[limits]\nmax_payload = \"big\"\n"),
            vec![],
            vec!["kaelix.toml:2:15: limits.max_payload: invalid type: string \"big\", expected usize"],
        ),
        (
            "negative size",
            t("[limits]\nmax_connections = -1\n"),
            vec![],
            vec!["kaelix.toml:2:19: limits.max_connections: invalid value: integer `-1`, expected usize"],
        ),
        (
            "bad socket address",
            t("[nats]\nlisten = \"localhost\"\n"),
            vec![],
            vec!["kaelix.toml:2:10: nats.listen: invalid socket address syntax"],
        ),
        (
            "unknown policy",
            t("[limits]\nslow_consumer = \"block\"\n"),
            vec![],
            vec!["kaelix.toml:2:17: limits.slow_consumer: unknown variant `block`, expected `disconnect` or `drop`"],
        ),
        (
            "unknown storage",
            t("[[topics]]\nname = \"a\"\nstorage = \"disk\"\n"),
            vec![],
            vec![
                "kaelix.toml:3:11: topics[0].storage: unknown variant `disk`, expected one of `memory`, `durable`, `replicated`",
            ],
        ),
        (
            "unknown log level",
            t("[log]\nlevel = \"loud\"\n"),
            vec![],
            vec![
                "kaelix.toml:2:9: log.level: unknown variant `loud`, expected one of `error`, `warn`, `info`, `debug`, `trace`",
            ],
        ),
        (
            "topics not an array",
            t("topics = 3\n"),
            vec![],
            vec!["kaelix.toml:1:10: topics: invalid type: integer `3`, expected a sequence"],
        ),
        (
            "topic without a name",
            t("[[topics]]\npartitions = 2\n"),
            vec![],
            vec!["kaelix.toml:1:1: topics[0]: missing field `name`"],
        ),
        (
            "partitions too large for u32",
            t("[[topics]]\nname = \"a\"\npartitions = 5000000000\n"),
            vec![],
            vec!["kaelix.toml:3:14: topics[0].partitions: invalid value: integer `5000000000`, expected u32"],
        ),
        // --- unknown keys
        (
            "unknown top-level key",
            t("listen = \"127.0.0.1:4222\"\n"),
            vec![],
            vec![
                "kaelix.toml:1:1: listen: unknown field `listen`, expected one of `server_name`, `nats`, `native`, `limits`, `topics`, `auth`, `tls`, `log`, `node`, `runtime`, `telemetry`, `tracing`, `plugins`, `cluster`",
            ],
        ),
        (
            "unknown limits key",
            t("[limits]\nmax_payloadd = 3\n"),
            vec![],
            vec![
                "kaelix.toml:2:1: limits.max_payloadd: unknown field `max_payloadd`, expected one of `max_connections`, `max_subscriptions`, `max_payload`, `max_control_line`, `max_pending`, `slow_consumer`, `ping_interval_ms`, `max_pings_out`, `auth_timeout_ms`",
            ],
        ),
        (
            "unknown section",
            t("[network]\nmax_connections = 5\n"),
            vec![],
            vec![
                "kaelix.toml:1:2: network: unknown field `network`, expected one of `server_name`, `nats`, `native`, `limits`, `topics`, `auth`, `tls`, `log`, `node`, `runtime`, `telemetry`, `tracing`, `plugins`, `cluster`",
            ],
        ),
        (
            "unknown topic key",
            t("[[topics]]\nname = \"a\"\nretention = 5\n"),
            vec![],
            vec![
                "kaelix.toml:3:1: topics[0].retention: unknown field `retention`, expected one of `name`, `partitions`, `storage`, `flush_interval_ms`, `max_bytes`, `max_records`, `max_age_secs`",
            ],
        ),
        (
            "unknown variable",
            t(""),
            vec![("KAELIX_LIMITS__MAX_PAYLOADD", "5")],
            vec![
                "environment KAELIX_LIMITS__MAX_PAYLOADD: limits.max_payloadd: unknown field `max_payloadd`, expected one of `max_connections`, `max_subscriptions`, `max_payload`, `max_control_line`, `max_pending`, `slow_consumer`, `ping_interval_ms`, `max_pings_out`, `auth_timeout_ms`",
            ],
        ),
        (
            "variable of the wrong type",
            t(""),
            vec![("KAELIX_LIMITS__MAX_PAYLOAD", "lots")],
            vec![
                "environment KAELIX_LIMITS__MAX_PAYLOAD: limits.max_payload: invalid type: string \"lots\", expected usize",
            ],
        ),
        (
            "variable into a non-table",
            t(""),
            vec![("KAELIX_SERVER_NAME__X", "1")],
            vec![
                "environment KAELIX_SERVER_NAME__X: server_name.x: server_name is not a table, so it has no key \"x\"",
            ],
        ),
        // --- ranges
        (
            "zero payload",
            t("[limits]\nmax_payload = 0\n"),
            vec![],
            vec!["kaelix.toml:2:15: limits.max_payload: 0 is outside 1..=8388608"],
        ),
        (
            "payload above the broker's maximum",
            t("[limits]\nmax_payload = 9000000\nmax_pending = 90000000\n[native]\nmax_frame_bytes = 99000000\n"),
            vec![],
            vec!["kaelix.toml:2:15: limits.max_payload: 9000000 is outside 1..=8388608"],
        ),
        (
            "tiny control line",
            t("[limits]\nmax_control_line = 10\n"),
            vec![],
            vec!["kaelix.toml:2:20: limits.max_control_line: 10 is below 64 bytes"],
        ),
        (
            "zero connections",
            t("[limits]\nmax_connections = 0\n"),
            vec![],
            vec!["kaelix.toml:2:19: limits.max_connections: must be at least 1"],
        ),
        (
            "zero ping interval",
            t("[limits]\nping_interval_ms = 0\n"),
            vec![],
            vec!["kaelix.toml:2:20: limits.ping_interval_ms: ping interval and max_pings_out must be positive"],
        ),
        (
            "zero auth timeout",
            t("[limits]\nauth_timeout_ms = 0\n"),
            vec![],
            vec!["kaelix.toml:2:19: limits.auth_timeout_ms: must be positive: no client could finish CONNECT"],
        ),
        (
            "zero batch",
            t("[native]\nmax_batch = 0\n"),
            vec![],
            vec!["kaelix.toml:2:13: native.max_batch: must be at least 1"],
        ),
        (
            "zero max partitions",
            t("[native]\nmax_partitions = 0\n"),
            vec![],
            vec!["kaelix.toml:2:18: native.max_partitions: must be at least 1"],
        ),
        (
            "zero long poll",
            t("[native]\nmax_wait_ms = 0\n"),
            vec![],
            vec!["kaelix.toml:2:15: native.max_wait_ms: must be positive: a long poll could not wait at all"],
        ),
        (
            "zero partitions",
            t("[[topics]]\nname = \"a\"\npartitions = 0\n"),
            vec![],
            vec!["kaelix.toml:3:14: topics[0].partitions: must be at least 1"],
        ),
        (
            "zero retention bytes",
            t("[[topics]]\nname = \"a\"\nmax_bytes = 0\n"),
            vec![],
            vec!["kaelix.toml:3:13: topics[0].max_bytes: 0 would retain nothing (leave it out for no limit)"],
        ),
        (
            "zero retention age",
            t("[[topics]]\nname = \"a\"\nmax_age_secs = 0\n"),
            vec![],
            vec!["kaelix.toml:3:16: topics[0].max_age_secs: 0 would retain nothing (leave it out for no limit)"],
        ),
        (
            "a plugin chain naming an undeclared plugin",
            t(
                "[[plugins.wasm]]\nname = \"redact\"\nmodule = \"r.wasm\"\n[[plugins.chains]]\npattern = \"orders.*\"\nstages = [\"redact\", \"ghost\"]\n",
            ),
            vec![],
            vec!["kaelix.toml:6:10: plugins.chains[0].stages: stage 1: no plugin named \"ghost\" (declared: redact)"],
        ),
        (
            "zero flush interval",
            t("[[topics]]\nname = \"a\"\nflush_interval_ms = 0\n"),
            vec![],
            vec!["kaelix.toml:3:21: topics[0].flush_interval_ms: must be positive (leave it out to sync every batch)"],
        ),
        (
            "zero workers",
            t("[runtime]\nworker_threads = 0\n"),
            vec![],
            vec!["kaelix.toml:2:18: runtime.worker_threads: must be at least 1 (leave it out for one per CPU)"],
        ),
        (
            "no room for any task",
            t("[runtime]\ntask_queue_depth = 0\n"),
            vec![],
            vec!["kaelix.toml:2:20: runtime.task_queue_depth: must be at least 1: every connection needs a task"],
        ),
        (
            "more priority levels than tiers",
            t("[runtime]\npriority_levels = 7\n"),
            vec![],
            vec!["kaelix.toml:2:19: runtime.priority_levels: must be 1 to 4, not 7"],
        ),
        (
            "zero priority levels",
            t("[runtime]\npriority_levels = 0\n"),
            vec![],
            vec!["kaelix.toml:2:19: runtime.priority_levels: must be 1 to 4, not 0"],
        ),
        (
            "a spin longer than a latency target",
            t("[runtime]\ntarget_latency_us = 50000\n"),
            vec![],
            vec![
                "kaelix.toml:2:21: runtime.target_latency_us: 50000 µs of spinning per idle worker is more than 10000 µs: that is a core burnt, not a latency target",
            ],
        ),
        (
            "empty data directory",
            t("[node]\ndata_dir = \"\"\n"),
            vec![],
            vec!["kaelix.toml:2:12: node.data_dir: must not be empty"],
        ),
        (
            "bad topic name",
            t("[[topics]]\nname = \"a..b\"\n"),
            vec![],
            vec!["kaelix.toml:2:8: topics[0].name: topic \"a..b\" has an empty token at position 1"],
        ),
        (
            "zero range from the environment",
            t(""),
            vec![("KAELIX_NATIVE__MAX_BATCH", "0")],
            vec!["environment KAELIX_NATIVE__MAX_BATCH: native.max_batch: must be at least 1"],
        ),
        // --- contradictions between sections
        (
            "pending below payload",
            t("[limits]\nmax_payload = 4096\nmax_pending = 1024\n"),
            vec![],
            vec!["kaelix.toml:3:15: limits.max_pending: 1024 is smaller than limits.max_payload (4096)"],
        ),
        (
            "frame cannot hold a payload",
            t("[native]\nmax_frame_bytes = 1000\n"),
            vec![],
            vec![
                "kaelix.toml:2:19: native.max_frame_bytes: 1000 cannot hold a message of limits.max_payload (1048576): at least 1310720 is needed",
            ],
        ),
        (
            "payload raised past the frame",
            t("[limits]\nmax_payload = 8000000\n[native]\nmax_frame_bytes = 8000000\n"),
            vec![],
            vec![
                "kaelix.toml:4:19: native.max_frame_bytes: 8000000 cannot hold a message of limits.max_payload (8000000): at least 8262144 is needed",
            ],
        ),
        (
            "same listener twice",
            t("[nats]\nlisten = \"127.0.0.1:5000\"\n[native]\nlisten = \"127.0.0.1:5000\"\n"),
            vec![],
            vec![
                "kaelix.toml:4:10: native.listen: 127.0.0.1:5000 is also nats.listen: the two listeners need distinct ports",
            ],
        ),
        (
            "wildcard overlaps a listener",
            t(
                "[nats]\nlisten = \"0.0.0.0:5000\"\n[native]\nlisten = \"127.0.0.1:5000\"\n[auth]\ntoken = \"long-enough-token\"\n",
            ),
            vec![],
            vec![
                "kaelix.toml:4:10: native.listen: 127.0.0.1:5000 overlaps nats.listen 0.0.0.0:5000: the two listeners need distinct ports",
            ],
        ),
        (
            "memory topic flushed",
            t("[[topics]]\nname = \"a\"\nstorage = \"memory\"\nmax_records = 10\nflush_interval_ms = 5\n"),
            vec![],
            vec!["kaelix.toml:5:21: topics[0].flush_interval_ms: only durable topics are flushed"],
        ),
        (
            "topic configured twice",
            t("[[topics]]\nname = \"a\"\n[[topics]]\nname = \"a\"\n"),
            vec![],
            vec!["kaelix.toml:4:8: topics[1].name: topic \"a\" is configured twice"],
        ),
        (
            "more partitions than allowed",
            t("[native]\nmax_partitions = 4\n[[topics]]\nname = \"a\"\npartitions = 8\n"),
            vec![],
            vec!["kaelix.toml:5:14: topics[0].partitions: 8 is more than native.max_partitions (4)"],
        ),
        (
            "token and users",
            t(&format!("[auth]\ntoken = \"abcdefghij\"\n[[auth.users]]\nuser = \"a\"\npassword = \"{HASH}\"\n")),
            vec![],
            vec!["kaelix.toml:1:2: auth: configure either token or users, not both"],
        ),
        (
            "plain password",
            t("[[auth.users]]\nuser = \"a\"\npassword = \"secret\"\n"),
            vec![],
            vec!["kaelix.toml:3:12: auth.users[0].password: not a bcrypt hash (it must start with $2)"],
        ),
        (
            "user twice",
            t(&format!(
                "[[auth.users]]\nuser = \"a\"\npassword = \"{HASH}\"\n[[auth.users]]\nuser = \"a\"\npassword = \"{HASH}\"\n"
            )),
            vec![],
            vec!["kaelix.toml:5:8: auth.users[1].user: \"a\" is configured twice"],
        ),
        (
            "bad permission pattern",
            t(&format!(
                "[[auth.users]]\nuser = \"a\"\npassword = \"{HASH}\"\n[auth.users.publish]\nallow = [\"a.>.b\"]\n"
            )),
            vec![],
            vec!["kaelix.toml:4:13: auth.users[0].publish: pattern \"a.>.b\": '>' may only be the last token"],
        ),
        // --- impossible on this machine
        (
            "address of another machine",
            t("[nats]\nlisten = \"10.1.2.3:4222\"\n[auth]\ntoken = \"long-enough-token\"\n"),
            vec![],
            vec!["kaelix.toml:2:10: nats.listen: 10.1.2.3 is not an address of this machine"],
        ),
        (
            "port taken",
            t("[nats]\nlisten = \"127.0.0.1:4333\"\n"),
            vec![],
            vec!["kaelix.toml:2:10: nats.listen: 127.0.0.1:4333 is already in use by another process"],
        ),
        (
            "port taken, from a variable",
            t(""),
            vec![("KAELIX_NATIVE__LISTEN", "127.0.0.1:4333")],
            vec![
                "environment KAELIX_NATIVE__LISTEN: native.listen: 127.0.0.1:4333 is already in use by another process",
            ],
        ),
        (
            "pending beyond memory",
            t("[limits]\nmax_pending = 9000000000\n"),
            vec![],
            vec![
                "kaelix.toml:2:15: limits.max_pending: 9000000000 bytes for one connection is more than this machine's memory (8589934592)",
            ],
        ),
        (
            "retention beyond the disk",
            t(
                "[node]\ndata_dir = \"/var/lib/kaelix\"\n[[topics]]\nname = \"a\"\npartitions = 4\nmax_bytes = 30000000000\n",
            ),
            vec![],
            vec![
                "kaelix.toml:3:3: topics: durable topics may retain 120000000000 bytes, more than the 107374182400 bytes free for /var/lib/kaelix",
            ],
        ),
        (
            "memory topics beyond memory",
            t("[[topics]]\nname = \"a\"\nstorage = \"memory\"\nmax_bytes = 9000000000\n"),
            vec![],
            vec![
                "kaelix.toml:1:3: topics: memory topics may retain 9000000000 bytes, more than this machine's memory (8589934592)",
            ],
        ),
        // --- [cluster]
        (
            "own id missing from the peers",
            t(&format!("[cluster]\nenabled = true\nnode_id = 4\npeers = {PEERS}\n")),
            vec![],
            vec!["kaelix.toml:3:11: cluster.node_id: member 4 is not among cluster.peers (members 1, 2, 3)"],
        ),
        (
            "cluster without a node id",
            t(&format!("[cluster]\nenabled = true\npeers = {PEERS}\n")),
            vec![],
            vec!["kaelix.toml:1:2: cluster.node_id: must be set (1 or more) to run as a cluster member"],
        ),
        (
            "a malformed peer",
            t(
                "[cluster]\nenabled = true\nnode_id = 1\npeers = [\"1=127.0.0.1:7101\", \"2@127.0.0.1:7111\", \"3=127.0.0.1:7121\"]\n",
            ),
            vec![],
            vec![
                "kaelix.toml:4:9: cluster.peers[1]: \"2@127.0.0.1:7111\" is not ID=HOST:PORT (e.g. \"2=127.0.0.1:7111\")",
            ],
        ),
        (
            "two members",
            t("[cluster]\nenabled = true\nnode_id = 1\npeers = [\"1=127.0.0.1:7101\", \"2=127.0.0.1:7111\"]\n"),
            vec![],
            vec![
                "kaelix.toml:4:9: cluster.peers: 2 members listed: a cluster has 3 to 9 (every member holds every replicated partition)",
            ],
        ),
        (
            "a replication factor of 4",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nreplication_factor = 4\n")),
            vec![],
            vec![
                "kaelix.toml:5:22: cluster.replication_factor: 4 voters per partition: 3 or 5 (a majority of an even number tolerates no more failures than of one fewer; 1 is not replicated)",
            ],
        ),
        (
            "a replication factor above the member count",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nreplication_factor = 5\n")),
            vec![],
            vec![
                "kaelix.toml:5:22: cluster.replication_factor: 5 voters per partition, but cluster.peers lists 3 members",
            ],
        ),
        (
            "an election timeout of 10 ms",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nelection_timeout_ms = 10\n")),
            vec![],
            vec!["kaelix.toml:5:23: cluster.election_timeout_ms: 10 is outside 50..=60000 (milliseconds)"],
        ),
        (
            "a snapshot every 4 entries",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nsnapshot_entries = 4\n")),
            vec![],
            vec!["kaelix.toml:5:20: cluster.snapshot_entries: 4 is outside 16..=10000000"],
        ),
        (
            "a log of fifty times the snapshot before the next",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nsnapshot_log_percent = 5000\n")),
            vec![],
            vec!["kaelix.toml:5:24: cluster.snapshot_log_percent: 5000 is outside 0..=1000"],
        ),
        (
            "heartbeats as slow as half the election timeout",
            t(&format!(
                "[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nelection_timeout_ms = 1000\nheartbeat_interval_ms = 500\n"
            )),
            vec![],
            vec![
                "kaelix.toml:6:25: cluster.heartbeat_interval_ms: 500 ms: at least 5 and under half of cluster.election_timeout_ms (1000 ms), so one lost heartbeat does not start an election",
            ],
        ),
        (
            "a dead voter replaced after 10 ms, from a variable",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\n")),
            vec![("KAELIX_CLUSTER__REPLACE_DEAD_AFTER_MS", "10")],
            vec![
                "environment KAELIX_CLUSTER__REPLACE_DEAD_AFTER_MS: cluster.replace_dead_after_ms: 10 is outside 100..=86400000 (milliseconds)",
            ],
        ),
        (
            "a member's address on another's forwarding port",
            t(
                "[cluster]\nenabled = true\nnode_id = 1\npeers = [\"1=127.0.0.1:7101\", \"2=127.0.0.1:7102\", \"3=127.0.0.1:7121\"]\n",
            ),
            vec![],
            vec![
                "kaelix.toml:4:9: cluster.peers[1]: member 2's address 127.0.0.1:7102 is also member 1's forwarding port",
            ],
        ),
        (
            "a malformed join address",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\njoin = [\"127.0.0.1\"]\n")),
            vec![],
            vec!["kaelix.toml:5:8: cluster.join[0]: \"127.0.0.1\" is not HOST:PORT (e.g. \"127.0.0.1:7111\")"],
        ),
        (
            "joining by address without a listen address",
            t("[cluster]\nenabled = true\nnode_id = 4\njoin = [\"127.0.0.1:7101\"]\n"),
            vec![],
            vec![
                "kaelix.toml:1:2: cluster.listen: must be set when cluster.peers is empty: it is the address the other members reach this one at",
            ],
        ),
        (
            "joining by address with replicated topics",
            t(
                "[[topics]]\nname = \"orders\"\nstorage = \"replicated\"\n[cluster]\nenabled = true\nnode_id = 4\nlisten = \"127.0.0.1:7131\"\njoin = [\"127.0.0.1:7101\"]\n",
            ),
            vec![],
            vec![
                "kaelix.toml:4:2: cluster.peers: empty, yet replicated topics are configured: their Raft groups are the members cluster.peers lists (a member that only joins by address holds no replicated partitions yet)",
            ],
        ),
        (
            "a member listed twice",
            t(
                "[cluster]\nenabled = true\nnode_id = 1\npeers = [\"1=127.0.0.1:7101\", \"1=127.0.0.1:7111\", \"3=127.0.0.1:7121\"]\n",
            ),
            vec![],
            vec!["kaelix.toml:4:9: cluster.peers[1]: member 1 is listed twice"],
        ),
        (
            "listening elsewhere than the own entry",
            t(&format!("[cluster]\nenabled = true\nnode_id = 2\nlisten = \"127.0.0.1:7200\"\npeers = {PEERS}\n")),
            vec![],
            vec![
                "kaelix.toml:4:10: cluster.listen: 127.0.0.1:7200 is not member 2's address in cluster.peers (127.0.0.1:7111): peers would connect elsewhere",
            ],
        ),
        (
            "the NATS listener on the cluster's forwarding port",
            t(&format!(
                "[nats]\nlisten = \"127.0.0.1:7102\"\n[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\n"
            )),
            vec![],
            vec!["kaelix.toml:2:10: nats.listen: 127.0.0.1:7102 is this member's cluster forwarding port"],
        ),
        (
            "a replicated topic without a cluster",
            t("[[topics]]\nname = \"orders\"\nstorage = \"replicated\"\n"),
            vec![],
            vec![
                "kaelix.toml:3:11: topics[0].storage: a replicated topic needs a cluster ([cluster] enabled = true, or kaelix serve --cluster)",
            ],
        ),
        (
            "a durable topic in a cluster",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\n[[topics]]\nname = \"orders\"\n")),
            vec![],
            vec![
                "kaelix.toml:5:1: topics[0].storage: a cluster member stores topics only as \"replicated\" (Raft groups of every member; durable is per node) or keeps them in \"memory\"",
            ],
        ),
        (
            "own id missing, from a variable",
            t(&format!("[cluster]\nenabled = true\npeers = {PEERS}\n")),
            vec![("KAELIX_CLUSTER__NODE_ID", "7")],
            vec![
                "environment KAELIX_CLUSTER__NODE_ID: cluster.node_id: member 7 is not among cluster.peers (members 1, 2, 3)",
            ],
        ),
        (
            "the cluster port taken",
            t(
                "[cluster]\nenabled = true\nnode_id = 1\npeers = [\"1=127.0.0.1:4332\", \"2=127.0.0.1:7111\", \"3=127.0.0.1:7121\"]\n",
            ),
            vec![],
            vec![
                "kaelix.toml:4:9: cluster.peers: 127.0.0.1:4333 (this member's forwarding port) is already in use by another process",
            ],
        ),
        (
            "a forward timeout of zero",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nforward_timeout_ms = 0\n")),
            vec![],
            vec!["kaelix.toml:5:22: cluster.forward_timeout_ms: 0 is outside 100..=600000 (milliseconds)"],
        ),
        (
            "a forward timeout of an hour",
            t("[cluster]\nforward_timeout_ms = 3600000\n"),
            vec![],
            vec![
                "kaelix.toml:2:22: cluster.forward_timeout_ms: 3600000 is outside 100..=600000 (milliseconds)",
                "kaelix.toml:1:2: warning: cluster.enabled: false: node_id, listen, peers, join, forward_timeout_ms, initial_state, replication_factor, replace_dead_after_ms, election_timeout_ms, heartbeat_interval_ms, snapshot_entries and snapshot_log_percent are ignored (a single node)",
            ],
        ),
        (
            "a forward timeout too short, from a variable",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\n")),
            vec![("KAELIX_CLUSTER__FORWARD_TIMEOUT_MS", "20")],
            vec![
                "environment KAELIX_CLUSTER__FORWARD_TIMEOUT_MS: cluster.forward_timeout_ms: 20 is outside 100..=600000 (milliseconds)",
            ],
        ),
        (
            "a forward timeout in seconds, as a string",
            t("[cluster]\nforward_timeout_ms = \"5s\"\n"),
            vec![],
            vec!["kaelix.toml:2:22: cluster.forward_timeout_ms: invalid type: string \"5s\", expected u64"],
        ),
        (
            "an initial cluster state that is neither new nor existing",
            t(&format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\ninitial_state = \"fresh\"\n")),
            vec![],
            vec!["kaelix.toml:5:17: cluster.initial_state: unknown variant `fresh`, expected `new` or `existing`"],
        ),
        (
            "a tracing sampling ratio above 1",
            t("[tracing]\nenabled = true\nsampling_ratio = 1.5\n"),
            vec![],
            vec!["kaelix.toml:3:18: tracing.sampling_ratio: 1.5 is outside 0.0..=1.0 (a probability)"],
        ),
        (
            "a negative tracing sampling ratio, from a variable",
            t("[tracing]\nenabled = true\n"),
            vec![("KAELIX_TRACING__SAMPLING_RATIO", "-0.5")],
            vec![
                "environment KAELIX_TRACING__SAMPLING_RATIO: tracing.sampling_ratio: -0.5 is outside 0.0..=1.0 (a probability)",
            ],
        ),
        (
            "a tracing sampling ratio as a percentage string",
            t("[tracing]\nsampling_ratio = \"10%\"\n"),
            vec![],
            vec!["kaelix.toml:2:18: tracing.sampling_ratio: invalid type: string \"10%\", expected f64"],
        ),
        (
            "an https tracing endpoint",
            t("[tracing]\nenabled = true\nendpoint = \"https://otel.example:4318/v1/traces\"\n"),
            vec![],
            vec![
                "kaelix.toml:3:12: tracing.endpoint: \"https://otel.example:4318/v1/traces\": https is not supported: use the collector's plain-HTTP OTLP receiver (http://HOST:4318/v1/traces)",
            ],
        ),
        (
            "a tracing endpoint without the traces path",
            t("[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:4318\"\n"),
            vec![],
            vec![
                "kaelix.toml:3:12: tracing.endpoint: \"http://127.0.0.1:4318\": has no path: the collector's OTLP/HTTP traces path is /v1/traces",
            ],
        ),
        (
            "an empty tracing service name",
            t("[tracing]\nservice_name = \"\"\n"),
            vec![],
            vec!["kaelix.toml:2:16: tracing.service_name: must not be empty (it names this service in every trace)"],
        ),
    ]
}

const PEERS: &str = "[\"1=127.0.0.1:7101\", \"2=127.0.0.1:7111\", \"3=127.0.0.1:7121\"]";

#[test]
fn every_bad_configuration_is_refused_with_its_exact_message() {
    let catalog = catalog();
    assert!(catalog.len() >= 40, "the catalog must hold at least 40 bad configurations, has {}", catalog.len());
    let mut wrong = Vec::new();
    for (name, text, env, expected) in &catalog {
        match diagnostics(text, env) {
            Ok(warnings) => wrong.push(format!("{name}: accepted (warnings: {warnings:?})")),
            Err(got) if got.iter().map(String::as_str).collect::<Vec<_>>() != *expected => {
                wrong.push(format!("{name}:\n  expected {expected:?}\n  got      {got:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{} of {} entries differ:\n{}", wrong.len(), catalog.len(), wrong.join("\n"));
}

#[test]
fn warnings_inform_without_stopping() {
    let warnings = diagnostics(
        "[nats]\nlisten = \"0.0.0.0:4222\"\n[runtime]\nworker_threads = 16\n[log]\nlevel = \"trace\"\n[[topics]]\nname = \"m\"\nstorage = \"memory\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        warnings,
        vec![
            "kaelix.toml:2:10: warning: nats.listen: no [auth] token or users: anyone who can reach 0.0.0.0:4222 may publish and subscribe",
            "kaelix.toml:9:11: warning: topics[0].storage: a memory topic without max_bytes or max_records grows without bound",
            "kaelix.toml:6:9: warning: log.level: trace logs every operation: expect it to cost throughput",
            "kaelix.toml:4:18: warning: runtime.worker_threads: 16 worker threads on 4 cores: threads will contend for CPUs",
        ]
    );
}

#[test]
fn the_effective_configuration_records_every_origin() {
    let loader = ConfigLoader::new()
        .with_probe(Arc::new(probe()))
        .with_env_vars("KAELIX", [("KAELIX_LIMITS__MAX_PAYLOAD".to_owned(), "2048".to_owned())])
        .with_override("nats.listen", "127.0.0.1:0", "--nats-listen");
    let loaded = loader
        .load_text::<ServerConfig>(Some(Path::new("k.toml")), Some("server_name = \"n1\"\n"), Phase::Start)
        .unwrap();
    assert_eq!(loaded.config.limits.max_payload, 2048);
    assert_eq!(loaded.config.server_name, "n1");
    assert_eq!(
        loaded.origin_lines(false),
        vec![
            "limits.max_payload = 2048  # environment KAELIX_LIMITS__MAX_PAYLOAD",
            "nats.listen = \"127.0.0.1:0\"  # flag --nats-listen",
            "server_name = \"n1\"  # k.toml:1:15",
        ]
    );
    assert!(loaded.origin_lines(true).contains(&"limits.max_connections = 65536  # default".to_owned()));
    let back: ServerConfig = toml::from_str(&loaded.effective_toml()).unwrap();
    assert_eq!(back, loaded.config, "the effective TOML reads back as the same configuration");
}

#[test]
fn a_reload_that_changes_the_forward_timeout_is_refused() {
    // What `kaelix serve` does on a reload: the new file is loaded and
    // offered to a manager holding the running configuration under the
    // server's reload policy.
    let path = Path::new("kaelix.toml");
    let load = |ms: u64| {
        let text = format!("[cluster]\nenabled = true\nnode_id = 1\npeers = {PEERS}\nforward_timeout_ms = {ms}\n");
        ConfigLoader::new()
            .with_probe(Arc::new(FixedProbe::default()))
            .load_text::<ServerConfig>(Some(path), Some(&text), Phase::Reload)
            .unwrap()
    };
    let running = load(2000);
    assert_eq!(running.config.cluster.forward_timeout(), kaelix_core::time::Duration::from_millis(2000));
    let policy = ReloadPolicy::new(ServerConfig::RELOADABLE.iter().copied());
    let manager = HotReloadManager::new(ConfigLoader::new(), running, policy).unwrap();
    assert_eq!(
        manager.offer(load(9000)),
        ReloadOutcome::Rejected {
            reason: "changing these keys needs a restart: cluster.forward_timeout_ms".to_owned()
        }
    );
    assert_eq!(manager.current().cluster.forward_timeout_ms, 2000, "the running value stays");
}

#[test]
fn a_reload_that_changes_tracing_is_refused() {
    // The exporter and its sampler are installed once at start.
    let path = Path::new("kaelix.toml");
    let load = |ratio: f64| {
        let text = format!("[tracing]\nenabled = true\nsampling_ratio = {ratio}\n");
        ConfigLoader::new()
            .with_probe(Arc::new(FixedProbe::default()))
            .load_text::<ServerConfig>(Some(path), Some(&text), Phase::Reload)
            .unwrap()
    };
    let running = load(0.5);
    let policy = ReloadPolicy::new(ServerConfig::RELOADABLE.iter().copied());
    let manager = HotReloadManager::new(ConfigLoader::new(), running, policy).unwrap();
    assert_eq!(
        manager.offer(load(0.25)),
        ReloadOutcome::Rejected { reason: "changing these keys needs a restart: tracing.sampling_ratio".to_owned() }
    );
    assert_eq!(manager.current().tracing.sampling_ratio, 0.5, "the running value stays");
}

#[test]
fn a_small_task_bound_is_a_warning() {
    let warnings = diagnostics("[runtime]\ntask_queue_depth = 100\n", &[]).unwrap();
    assert_eq!(
        warnings,
        vec![
            "kaelix.toml:2:20: warning: runtime.task_queue_depth: 100 live tasks: each connection, subscription and stream takes one, so few clients fit"
        ]
    );
}

#[test]
fn the_runtime_section_defaults_to_the_executors_own_defaults() {
    let ours = kaelix_server::config::RuntimeSettings::default();
    let executor = kaelix_runtime_real::RuntimeConfig::default();
    assert_eq!(ours.worker_threads, executor.worker_threads);
    assert_eq!(ours.task_queue_depth, executor.task_queue_depth);
    assert_eq!(ours.target_latency_us, executor.target_latency_us);
    assert_eq!(ours.numa_aware, executor.numa_aware);
    assert_eq!(ours.priority_levels, executor.priority_levels);
}

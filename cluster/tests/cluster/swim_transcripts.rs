//! Transcript (data-driven) tests of the SWIM state machine, in the manner of
//! etcd-io/raft's `testdata/*.txt`: each file in `tests/swim_transcripts/`
//! scripts the inputs of one node and records, below each step, every output
//! it produced. The runner replays the inputs and compares; with
//! `KAELIX_BLESS=1` it rewrites the recorded outputs instead (then read the
//! diff: a transcript must show correct SWIM behaviour, not just any).
//!
//! A file is a list of blocks separated by blank lines:
//!
//! ```text
//! # comments (kept)
//! <command>
//! ----
//! <expected output, one line per output>
//! ```
//!
//! Commands (`T` is a time such as `1200ms` or `5s`, `nX` a node):
//!
//! * `config key=value…` before `start`: any `SwimConfig` field by name;
//! * `start nX [inc=N] [seed=N] [meta=M]`: the node under test, at the
//!   current time (0 unless `time` moved it);
//! * `time T`: the current time (absolute, only forward);
//! * `recv nX <packet>`: a datagram from `nX`, in the text form of
//!   `kaelix_cluster::swim::text` (`ping seq=3 | alive n2 inc=1`);
//!   `recv-raw nX <hex>`: raw bytes (the runner prints why they do not
//!   decode, if they do not);
//! * `timeout`: `handle_timeout` at the current time; `tick`: move to
//!   `poll_timeout()` and handle it; `run-until T`: tick until `T`
//!   (printing `@T` before the outputs of each tick that had any);
//! * `join nX…`, `leave`, `set-metadata M`;
//! * `members` (with each suspect's deadline and confirmations), `health`,
//!   `deadline`, `stats`: print state.
//!
//! Outputs print as `send nX <packet>`, `event <kind> nX inc=N [meta=M]`,
//! `rtt nX T`.

#![allow(
    clippy::disallowed_methods,
    reason = "a test runner reads (and when blessing, writes) its data files and reads KAELIX_BLESS"
)]

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use kaelix_cluster::swim::text::{Meta, parse_metadata, parse_node, parse_packet};
use kaelix_cluster::swim::{Output, Swim, SwimConfig};
use kaelix_core::rng::seeded;
use kaelix_core::time::{Duration, Instant};

struct Block {
    comments: Vec<String>,
    command: String,
    expected: Vec<String>,
    line: usize,
}

fn parse_file(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    let mut comments = Vec::new();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            comments.push(line.to_string());
            continue;
        }
        let command = line.trim().to_string();
        match lines.next() {
            Some((_, "----")) => {}
            other => panic!("line {}: expected ---- after the command, got {other:?}", n + 2),
        }
        let mut expected = Vec::new();
        while let Some((_, l)) = lines.next_if(|(_, l)| !l.trim().is_empty()) {
            expected.push(l.to_string());
        }
        blocks.push(Block { comments: std::mem::take(&mut comments), command, expected, line: n + 1 });
    }
    assert!(comments.is_empty(), "comments after the last command");
    blocks
}

fn render(blocks: &[Block]) -> String {
    let mut out = String::new();
    for (i, b) in blocks.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for c in &b.comments {
            writeln!(out, "{c}").unwrap();
        }
        writeln!(out, "{}\n----", b.command).unwrap();
        for e in &b.expected {
            writeln!(out, "{e}").unwrap();
        }
    }
    out
}

fn fmt_time(nanos: u64) -> String {
    if nanos.is_multiple_of(1_000_000) { format!("{}ms", nanos / 1_000_000) } else { format!("{}us", nanos / 1_000) }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?}");
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "us" => Ok(Duration::from_micros(n)),
        _ => Err(bad()),
    }
}

fn parse_time(s: &str) -> Result<Instant, String> {
    Ok(Instant::ZERO + parse_duration(s)?)
}

fn kv<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn hex(s: &str) -> Result<Bytes, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s:?}")))
        .collect::<Result<Vec<u8>, _>>()
        .map(Bytes::from)
}

struct Env {
    config: SwimConfig,
    swim: Option<Swim>,
    now: Instant,
}

impl Env {
    fn swim(&mut self) -> Result<&mut Swim, String> {
        self.swim.as_mut().ok_or_else(|| "no node: `start` first".to_string())
    }

    fn drain(&mut self, out: &mut Vec<String>) {
        let Some(s) = self.swim.as_mut() else { return };
        while let Some(o) = s.poll_output() {
            out.push(match o {
                Output::Send { to, message } => match kaelix_cluster::swim::wire::Packet::decode(message) {
                    Ok(p) => format!("send {to} {p}"),
                    Err(e) => format!("send {to} <undecodable: {e}>"),
                },
                Output::Event(e) => format!("event {e}"),
                Output::ProbeRtt { member, rtt } => format!("rtt {member} {}", fmt_time(rtt.as_nanos() as u64)),
            });
        }
    }

    fn set_config(&mut self, key: &str, value: &str) -> Result<(), String> {
        let c = &mut self.config;
        let num = || value.parse::<u64>().map_err(|_| format!("bad number {value:?} for {key}"));
        match key {
            "probe_interval" => c.probe_interval = parse_duration(value)?,
            "probe_timeout" => c.probe_timeout = parse_duration(value)?,
            "gc_after" => c.gc_after = parse_duration(value)?,
            "announce_interval" => c.announce_interval = parse_duration(value)?,
            "push_pull_interval" => c.push_pull_interval = parse_duration(value)?,
            "indirect_checks" => c.indirect_checks = num()? as usize,
            "suspicion_mult" => c.suspicion_mult = num()? as u32,
            "suspicion_max_timeout_mult" => c.suspicion_max_timeout_mult = num()? as u32,
            "retransmit_mult" => c.retransmit_mult = num()? as u32,
            "lhm_max" => c.lhm_max = num()? as u32,
            "max_packet_bytes" => c.max_packet_bytes = num()? as usize,
            "max_sync_bytes" => c.max_sync_bytes = num()? as usize,
            _ => return Err(format!("unknown config key {key:?}")),
        }
        Ok(())
    }

    fn tick(&mut self, out: &mut Vec<String>) -> Result<(), String> {
        let s = self.swim()?;
        let deadline = s.poll_timeout();
        let now = self.now.max(deadline);
        self.now = now;
        self.swim()?.handle_timeout(now);
        let mut outs = Vec::new();
        self.drain(&mut outs);
        if !outs.is_empty() {
            out.push(format!("@{}", fmt_time(now.as_nanos())));
            out.extend(outs);
        }
        Ok(())
    }

    fn exec(&mut self, command: &str) -> Result<Vec<String>, String> {
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        let now = self.now;
        let mut out = Vec::new();
        match verb {
            "config" => {
                if self.swim.is_some() {
                    return Err("config after start".into());
                }
                for w in &words {
                    let (k, v) = w.split_once('=').ok_or_else(|| format!("expected key=value, got {w:?}"))?;
                    self.set_config(k, v)?;
                }
            }
            "start" => {
                let me = parse_node(words.first().ok_or("start needs a node")?)?;
                let inc = kv(&words, "inc").map_or(Ok(1), |v| v.parse().map_err(|_| format!("bad inc {v}")))?;
                let seed = kv(&words, "seed").map_or(Ok(1), |v| v.parse().map_err(|_| format!("bad seed {v}")))?;
                let meta = kv(&words, "meta").map_or(Ok(Bytes::new()), parse_metadata)?;
                self.swim = Some(Swim::new(me, self.config.clone(), seeded(seed), now, inc, meta));
                self.drain(&mut out);
            }
            "time" => {
                let t = parse_time(rest.trim())?;
                if t < now {
                    return Err(format!("time goes backwards: {rest}"));
                }
                self.now = t;
            }
            "recv" => {
                let (from, packet) = rest.trim().split_once(' ').ok_or("recv nX <packet>")?;
                let bytes = parse_packet(packet)?.encode();
                self.swim()?.handle_message(now, parse_node(from)?, bytes);
                self.drain(&mut out);
            }
            "recv-raw" => {
                let [from, bytes] = &words[..] else { return Err("recv-raw nX <hex>".into()) };
                let bytes = hex(bytes)?;
                if let Err(e) = kaelix_cluster::swim::wire::Packet::decode(bytes.clone()) {
                    out.push(format!("(undecodable: {e})"));
                }
                self.swim()?.handle_message(now, parse_node(from)?, bytes);
                self.drain(&mut out);
            }
            "timeout" => {
                self.swim()?.handle_timeout(now);
                self.drain(&mut out);
            }
            "tick" => self.tick(&mut out)?,
            "run-until" => {
                let until = parse_time(rest.trim())?;
                while self.swim()?.poll_timeout() <= until {
                    self.tick(&mut out)?;
                }
                self.now = self.now.max(until);
            }
            "join" => {
                let seeds = words.iter().map(|w| parse_node(w)).collect::<Result<Vec<_>, _>>()?;
                self.swim()?.join(now, &seeds);
                self.drain(&mut out);
            }
            "leave" => {
                self.swim()?.leave(now);
                self.drain(&mut out);
            }
            "set-metadata" => {
                let meta = parse_metadata(rest.trim())?;
                self.swim()?.set_metadata(now, meta);
                self.drain(&mut out);
            }
            "members" => {
                let s = self.swim()?;
                for m in s.members() {
                    match s.suspicion(m.id) {
                        Some(x) => out.push(format!(
                            "{m} dead-at={} confirmations={}",
                            fmt_time(x.deadline.as_nanos()),
                            x.confirmations
                        )),
                        None => out.push(m.to_string()),
                    }
                }
            }
            "health" => {
                let s = self.swim()?;
                out.push(format!(
                    "lhm={} probe_interval={} probe_timeout={}",
                    s.local_health(),
                    fmt_time(s.scaled_probe_interval().as_nanos() as u64),
                    fmt_time(s.scaled_probe_timeout().as_nanos() as u64)
                ));
            }
            "deadline" => {
                let d = self.swim()?.poll_timeout();
                out.push(format!("next deadline {}", fmt_time(d.as_nanos())));
            }
            "stats" => {
                let s = self.swim()?.stats();
                out.push(format!(
                    "sent={} recv={} malformed={} probes={} failed={} ping-reqs={} nacks-sent={} nacks-recv={}",
                    s.messages_sent,
                    s.messages_received,
                    s.malformed,
                    s.probes,
                    s.probes_failed,
                    s.ping_reqs_sent,
                    s.nacks_sent,
                    s.nacks_received
                ));
                out.push(format!(
                    "refutations={} announces={} push-pulls={} collected={}",
                    s.refutations, s.announces, s.push_pulls, s.tombstones_collected
                ));
            }
            _ => return Err(format!("unknown command {verb:?}")),
        }
        Ok(out)
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/swim_transcripts")
}

fn run(file: &str) {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = parse_file(&text);
    let mut env = Env { config: SwimConfig::default(), swim: None, now: Instant::ZERO };
    let mut mismatch = None;
    for b in &mut blocks {
        let actual = env.exec(&b.command).unwrap_or_else(|e| panic!("{file}:{}: {}: {e}", b.line, b.command));
        if actual != b.expected && mismatch.is_none() {
            mismatch = Some(format!(
                "{file}:{}: {}\n--- expected\n{}\n--- actual\n{}\n",
                b.line,
                b.command,
                b.expected.join("\n"),
                actual.join("\n")
            ));
        }
        b.expected = actual;
    }
    if std::env::var("KAELIX_BLESS").is_ok_and(|v| v == "1") {
        let rendered = render(&blocks);
        if rendered != text {
            std::fs::write(&path, rendered).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        return;
    }
    if let Some(m) = mismatch {
        panic!("transcript differs (rerun with KAELIX_BLESS=1 to rewrite, then review the diff)\n{m}");
    }
}

macro_rules! transcripts {
    ($($name:ident => $file:literal,)*) => {
        mod swim {
            $(
                #[test]
                fn $name() {
                    super::run($file);
                }
            )*

            #[test]
            fn every_transcript_file_is_listed() {
                let listed = [$($file),*];
                let mut missing = Vec::new();
                for entry in std::fs::read_dir(super::dir()).expect("transcript directory") {
                    let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
                    if name.ends_with(".txt") && !listed.contains(&name.as_str()) {
                        missing.push(name);
                    }
                }
                assert!(missing.is_empty(), "add these to the transcripts! list: {missing:?}");
            }
        }
    };
}

transcripts! {
    probe_ack => "probe-ack.txt",
    indirect_probe => "indirect-probe.txt",
    suspect_then_refute => "suspect-then-refute.txt",
    suspect_then_dead => "suspect-then-dead.txt",
    dogpile_confirmations => "dogpile-confirmations.txt",
    buddy_system => "buddy-system.txt",
    join_through_seed => "join-through-seed.txt",
    leave => "leave.txt",
    rejoin_lower_incarnation => "rejoin-lower-incarnation.txt",
    announce_heals_partition => "announce-heals-partition.txt",
    tombstone_gc => "tombstone-gc.txt",
    lhm_scaling => "lhm-scaling.txt",
    metadata => "metadata.txt",
    malformed => "malformed.txt",
}

#[test]
fn swim_transcript_format_round_trips() {
    let text = "# c\nstart n1\n----\n\ntime 5s\n----\na\nb\n";
    assert_eq!(render(&parse_file(text)), text);
    assert_eq!(Meta(b"x").to_string(), "x");
}

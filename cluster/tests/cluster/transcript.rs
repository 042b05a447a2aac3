//! The file format and the one runner of every transcript (data-driven)
//! test, in the manner of etcd-io/raft's `testdata/*.txt`: a file scripts
//! the inputs of one sans-IO core and records, below each step, every
//! output it produced. The runner replays the inputs and compares; with
//! `KAELIX_BLESS=1` it rewrites the recorded outputs instead (then read the
//! diff: a transcript must show correct behaviour, not just any).
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
//! Each core plugs in through a [`Harness`]: its own commands (`start`,
//! messages, client requests, state dumps) and how it prints outputs. The
//! runner owns the clock and the commands every core shares (`T` is a time
//! such as `450ms` or `5s`):
//!
//! * `config key=value…`: settings, before `start`;
//! * `time T`: the current time (absolute, only forward);
//! * `timeout`: `handle_timeout` now;
//! * `tick`: move to the core's next deadline and handle it (printing `@T`
//!   first; cores with [`Harness::QUIET_TICKS`] print it only when the tick
//!   output something);
//! * `run-until T`: tick until `T`, then move to `T`;
//! * `deadline`: print the next deadline.

#![allow(
    clippy::disallowed_methods,
    reason = "a test runner reads (and when blessing, writes) its data files and reads KAELIX_BLESS"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kaelix_core::time::{Duration, Instant};

/// One command and what it printed.
pub struct Block {
    pub comments: Vec<String>,
    pub command: String,
    pub expected: Vec<String>,
    pub line: usize,
}

pub fn parse_file(text: &str) -> Vec<Block> {
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

pub fn render(blocks: &[Block]) -> String {
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

/// Replays `dir/file` through `exec` (one call per command, returning the
/// lines it printed); compares with the recording, or rewrites it when
/// `KAELIX_BLESS=1`.
pub fn run(dir: &Path, file: &str, mut exec: impl FnMut(&str) -> Result<Vec<String>, String>) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = parse_file(&text);
    let mut mismatch = None;
    for b in &mut blocks {
        let actual = exec(&b.command).unwrap_or_else(|e| panic!("{file}:{}: {}: {e}", b.line, b.command));
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

/// Fails naming every `.txt` file in `dir` that is not in `listed`.
pub fn check_listed(dir: &Path, listed: &[&str]) {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dir).expect("transcript directory") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".txt") && !listed.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "add these to the transcripts! list: {missing:?}");
}

/// One sans-IO core as its transcripts drive it.
pub trait Harness {
    /// The folder of `tests/` holding its transcripts.
    const DIR: &'static str;
    /// Whether a tick that output nothing prints no `@T` line.
    const QUIET_TICKS: bool = false;

    /// The state before any command.
    fn new() -> Self;
    /// Whether the core was started (`config` comes before that).
    fn started(&self) -> bool;
    /// `config key=value`.
    fn configure(&mut self, key: &str, value: &str) -> Result<(), String>;
    /// The core's next deadline (`None`: nothing scheduled).
    fn deadline(&mut self) -> Result<Option<Instant>, String>;
    /// `handle_timeout(now)`, and what it output.
    fn timeout(&mut self, now: Instant) -> Result<Vec<String>, String>;
    /// Any other command, at `now`; a command may move time forward (by
    /// ticking, say), never back.
    fn exec(&mut self, now: &mut Instant, verb: &str, rest: &str) -> Result<Vec<String>, String>;
}

/// The folder of `H`'s transcripts.
pub fn dir<H: Harness>() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(H::DIR)
}

/// A harness and the clock of one transcript.
pub struct Runner<H> {
    harness: H,
    now: Instant,
}

impl<H: Harness> Runner<H> {
    pub fn new() -> Self {
        Runner { harness: H::new(), now: Instant::ZERO }
    }

    /// Runs one command: the shared ones here, the rest by the harness.
    pub fn exec(&mut self, command: &str) -> Result<Vec<String>, String> {
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        let mut out = Vec::new();
        match verb {
            "config" => {
                if self.harness.started() {
                    return Err("config after start".into());
                }
                for w in rest.split_whitespace() {
                    let (k, v) = w.split_once('=').ok_or_else(|| format!("expected key=value, got {w:?}"))?;
                    self.harness.configure(k, v)?;
                }
            }
            "time" => {
                let t = parse_time(rest.trim())?;
                if t < self.now {
                    return Err(format!("time goes backwards: {rest}"));
                }
                self.now = t;
            }
            "timeout" => out = self.harness.timeout(self.now)?,
            "tick" => tick(&mut self.harness, &mut self.now, &mut out)?,
            "run-until" => {
                let until = parse_time(rest.trim())?;
                while self.harness.deadline()?.is_some_and(|d| d <= until) {
                    tick(&mut self.harness, &mut self.now, &mut out)?;
                }
                self.now = self.now.max(until);
            }
            "deadline" => out.push(match self.harness.deadline()? {
                Some(d) => format!("next deadline {}", fmt_time(d.as_nanos())),
                None => "no deadline".to_string(),
            }),
            _ => {
                let before = self.now;
                out = self.harness.exec(&mut self.now, verb, rest)?;
                assert!(self.now >= before, "{command}: the harness moved time backwards");
            }
        }
        Ok(out)
    }
}

/// Moves `now` to `h`'s next deadline and handles it, printing `@T` and
/// the outputs.
pub fn tick<H: Harness>(h: &mut H, now: &mut Instant, out: &mut Vec<String>) -> Result<(), String> {
    let deadline = h.deadline()?.ok_or("no deadline to move to")?;
    *now = (*now).max(deadline);
    let outputs = h.timeout(*now)?;
    if !H::QUIET_TICKS || !outputs.is_empty() {
        out.push(format!("@{}", fmt_time(now.as_nanos())));
        out.extend(outputs);
    }
    Ok(())
}

/// Replays (or blesses) `H`'s transcript `file`.
pub fn run_file<H: Harness>(file: &str) {
    let mut runner = Runner::<H>::new();
    run(&dir::<H>(), file, |command| runner.exec(command));
}

/// One `#[test]` per transcript file of the harness `$harness`, in a module
/// named `$module`; plus a test that every file in its folder is listed.
macro_rules! transcripts {
    ($module:ident, $harness:ty; $($name:ident => $file:literal,)*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    $crate::transcript::run_file::<$harness>($file);
                }
            )*

            #[test]
            fn every_transcript_file_is_listed() {
                $crate::transcript::check_listed(&$crate::transcript::dir::<$harness>(), &[$($file),*]);
            }
        }
    };
}
pub(crate) use transcripts;

pub fn fmt_time(nanos: u64) -> String {
    if nanos.is_multiple_of(1_000_000) { format!("{}ms", nanos / 1_000_000) } else { format!("{}us", nanos / 1_000) }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub fn parse_time(s: &str) -> Result<Instant, String> {
    Ok(Instant::ZERO + parse_duration(s)?)
}

/// The value of `key=value` among `words`.
pub fn kv<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

pub fn hex(s: &str) -> Result<Bytes, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s:?}")))
        .collect::<Result<Vec<u8>, _>>()
        .map(Bytes::from)
}

#[test]
fn transcript_format_round_trips() {
    let text = "# c\nstart n1\n----\n\ntime 5s\n----\na\nb\n";
    assert_eq!(render(&parse_file(text)), text);
}

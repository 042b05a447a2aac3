//! `kaelix bench`: a NATS load generator, like `nats bench`.
//!
//! It speaks the NATS client protocol (through `kaelix-nats`) to any server
//! URL, so the same tool measures `kaelix serve` and nats-server:
//!
//! * `pub SUBJECT --msgs N --size B --pubs P`: publish-only throughput. Each
//!   of the P connections writes pre-encoded `PUB`s in 64 KiB batches,
//!   sends a `PING` every [`PING_EVERY_BYTES`] and keeps at most
//!   [`MAX_PINGS_OUT`] unanswered (that bounds the data in flight). The time
//!   ends at the final `PONG`: every message was processed by the server.
//! * `pubsub`: one publisher, one subscriber; the time runs from the first
//!   publish to the last message received by the subscriber.
//! * `fanout --subs K`: one publisher, K subscribers (one connection each);
//!   the rate is delivered messages (N × K) per second.
//! * `req --msgs N`: request-reply round trips, one request at a time (a
//!   responder connection answers each request; the requester subscribes
//!   to an inbox and publishes with it as the reply subject); p50, p99,
//!   p99.9 and max latency (hdrhistogram) and requests per second.
//! * `ack --window W --ack reply|ok|ping [--batch]`: acknowledged
//!   publishing. Each of the `--pubs` connections keeps up to W publishes
//!   unacknowledged (a sliding window; with `--batch` the window is refilled
//!   only once it is empty, as a client that publishes W asynchronously and
//!   then waits for them all) and records each publish → acknowledgement
//!   latency. `--ack reply` publishes with a reply inbox and takes the
//!   message arriving on it as the acknowledgement: a JetStream `PubAck`
//!   (its JSON is checked, an API error ends the run). `--ack ok` connects
//!   `verbose` and takes each `+OK` as the acknowledgement of the oldest
//!   publish in flight (a server answers in order). `--ack ping` follows
//!   each write of publishes with a `PING` and takes its `PONG` as the
//!   acknowledgement of all of them. `kaelix serve` sends that `+OK`, and
//!   that `PONG`, only once the publishes are stored (for a replicated
//!   topic: committed); to nats-server both mean only "processed", so a
//!   JetStream measurement uses `reply`. Throughput runs from the first
//!   measured publish to the last acknowledgement.
//! * `subs --count M`: M subscriptions to distinct subjects (`s.<i>`) on
//!   `--conns` connections, acknowledged by a `PONG`; with `--server-pid`
//!   the server's resident memory (`VmRSS` in `/proc/PID/status`) before and
//!   after, and bytes per subscription. That works for any server process
//!   on this (Linux) machine: nats-server, `kaelix serve`, anything. Then a
//!   message to one of the subjects, from another connection, must arrive.
//!
//! Message rates count messages; MB/s counts payload bytes only, in 10^6
//! bytes. The result is a table on stdout, or one JSON line (`--json`) for
//! scripts (`benches/nats/compare.sh`). Progress goes to stderr.
//!
//! Every connection has a read and a write timeout (`--timeout-secs`): a
//! server that stops answering, drops a subscriber (slow consumer) or sends
//! `-ERR` ends the run with an error naming what happened, never a hang.

// The binary's edge: this module measures real sockets with real threads and
// the OS clock, and reads /proc; none of it is simulated protocol logic.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::VecDeque;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kaelix_nats::{
    Connect, Info, ServerOp, ServerOpParser, write_connect, write_ping, write_pong, write_pub, write_sub,
};
use serde::Serialize;

/// A publisher sends a `PING` after about this many bytes of `PUB`s.
pub const PING_EVERY_BYTES: usize = 1 << 20;
/// A publisher waits for a `PONG` when more `PING`s than this are unanswered.
pub const MAX_PINGS_OUT: u64 = 2;
/// Size of the pre-encoded batch of `PUB`s a publisher writes at once.
const BATCH_BYTES: usize = 64 << 10;
/// Write buffer of every connection.
const WRITE_BUFFER: usize = 64 << 10;
/// Read size of every connection.
const READ_BUFFER: usize = 256 << 10;
/// A blocking read returns after this long without data (so a subscriber
/// can notice the end of a run; `--timeout-secs` is checked in between).
const POLL: Duration = Duration::from_millis(100);

/// `kaelix bench` flags; the global ones may come before or after the mode.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub mode: Mode,
    /// Server URL: `nats://[user:pass@ | token@]host[:port]`.
    #[arg(long, global = true, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// Print the result as one JSON line instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Fail when the server sends nothing awaited (or accepts no bytes) for
    /// this many seconds.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout_secs: u64,
    /// pubsub/fanout: once the publisher is done, a subscriber that
    /// receives nothing for this many milliseconds stops waiting and the
    /// missing messages are reported as lost.
    #[arg(long, global = true, default_value_t = 2000)]
    pub grace_ms: u64,
}

/// The measurements.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Publish-only throughput, timed until the server answered the final
    /// PING (everything processed).
    Pub {
        /// Subject to publish to.
        #[arg(default_value = "bench")]
        subject: String,
        /// Messages in total (split over the publishers).
        #[arg(long, default_value_t = 1_000_000)]
        msgs: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Publisher connections, each on its own thread.
        #[arg(long, default_value_t = 1)]
        pubs: usize,
    },
    /// One publisher, one subscriber: rate at the subscriber until all are
    /// received.
    Pubsub {
        /// Subject.
        #[arg(default_value = "bench")]
        subject: String,
        /// Messages published.
        #[arg(long, default_value_t = 1_000_000)]
        msgs: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// One publisher, K subscribers: delivered messages per second in total.
    Fanout {
        /// Subject.
        #[arg(default_value = "bench")]
        subject: String,
        /// Messages published (each is delivered K times).
        #[arg(long, default_value_t = 100_000)]
        msgs: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Subscriber connections.
        #[arg(long, default_value_t = 8)]
        subs: usize,
    },
    /// Request-reply latency, one request at a time.
    Req {
        /// Subject the responder listens on.
        #[arg(default_value = "bench.req")]
        subject: String,
        /// Requests measured.
        #[arg(long, default_value_t = 10_000)]
        msgs: u64,
        /// Payload bytes of the request (the reply echoes it).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Requests sent first and not measured.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
    },
    /// Acknowledged publishing: up to W publishes in flight per connection,
    /// each timed from its write to its acknowledgement.
    Ack {
        /// Subject to publish to.
        #[arg(default_value = "bench")]
        subject: String,
        /// Messages measured in total (split over the publishers).
        #[arg(long, default_value_t = 100_000)]
        msgs: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Publisher connections, each on its own thread.
        #[arg(long, default_value_t = 1)]
        pubs: usize,
        /// Publishes in flight (unacknowledged) per connection.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// What acknowledges a publish: `reply` (a JetStream PubAck on the
        /// publish's reply inbox), `ok` (verbose mode's `+OK`) or `ping`
        /// (the `PONG` to a `PING` after each write of publishes).
        #[arg(long, value_enum, default_value_t = AckKind::Reply)]
        ack: AckKind,
        /// Refill the window only once every publish in it is
        /// acknowledged (bursts of W), instead of as each one is.
        #[arg(long)]
        batch: bool,
        /// Publishes per connection sent first and not measured.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
    },
    /// Subscription memory: M subscriptions to distinct subjects.
    Subs {
        /// Subscriptions (to `<prefix>.0` .. `<prefix>.<M-1>`).
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Connections the subscriptions are spread over.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Subject prefix.
        #[arg(long, default_value = "s")]
        prefix: String,
        /// The server's process id: its VmRSS is read from /proc/PID/status
        /// before and after (any server running on this machine).
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

/// What acknowledges a publish in the `ack` mode.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// A message on the publish's reply inbox, checked as a JetStream
    /// `PubAck` (JetStream answers a publish to a stream's subject so).
    Reply,
    /// `+OK` in verbose mode, one per publish, in order.
    Ok,
    /// The `PONG` answering a `PING` written after publishes: it
    /// acknowledges all of them (in order).
    Ping,
}

/// What one operation from the server acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// The publish of this number (a PubAck on its inbox).
    Publish(u64),
    /// The oldest publish in flight (`+OK`).
    Oldest,
    /// The publishes written before the oldest unanswered `PING` (`PONG`).
    PingGroup,
}

impl AckKind {
    fn name(self) -> &'static str {
        match self {
            AckKind::Reply => "reply",
            AckKind::Ok => "ok",
            AckKind::Ping => "ping",
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Round trips measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The `subs` mode's findings.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SubsReport {
    /// Subscriptions made.
    pub count: u64,
    /// Connections they were spread over.
    pub conns: usize,
    /// Subscriptions acknowledged per second.
    pub subs_per_sec: f64,
    /// Server VmRSS before subscribing (KiB).
    pub rss_before_kib: Option<u64>,
    /// Server VmRSS once all were acknowledged (KiB).
    pub rss_after_kib: Option<u64>,
    /// (after − before) / count.
    pub bytes_per_sub: Option<f64>,
    /// A message to one of the subjects arrived.
    pub routed: bool,
}

/// One run's result (also the `--json` line).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// `pub`, `pubsub`, `fanout`, `req` or `subs`.
    pub mode: String,
    /// The URL measured (without credentials).
    pub url: String,
    /// The server's name and version, from its `INFO`.
    pub server: String,
    /// Messages published (`req`: requests measured).
    pub msgs: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Publisher connections.
    pub pubs: usize,
    /// Subscriber connections.
    pub subs: usize,
    /// Measured time (`pubsub`/`fanout`: from the first publish to the
    /// last message received).
    pub secs: f64,
    /// `pub`: published; `pubsub`/`fanout`: delivered, all subscribers
    /// together; `req`: round trips.
    pub msgs_per_sec: f64,
    /// Payload megabytes (10^6) per second, counted as `msgs_per_sec`.
    pub mb_per_sec: f64,
    /// `req` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    /// `pubsub`/`fanout`: deliveries (msgs × subs) that never arrived.
    pub lost: u64,
    /// `subs` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<SubsReport>,
    /// `ack` only: publishes in flight per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// `ack` only: what acknowledged a publish (`reply`, `ok` or `ping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
    /// `ack` only: the window was refilled only once empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
}

/// Runs the benchmark and prints the result.
pub fn run(args: BenchArgs) -> ExitCode {
    match measure(&args) {
        Ok(report) => {
            if report.lost > 0 && args.json {
                eprintln!("kaelix bench: warning: {} deliveries never arrived", report.lost);
            }
            let text = if args.json {
                serde_json::to_string(&report).expect("the report serializes") + "\n"
            } else {
                render(&report)
            };
            // A closed stdout (`| head`) is not worth a panic.
            let _ = io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kaelix bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn measure(args: &BenchArgs) -> Result<Report, String> {
    let target = Target::parse(&args.url)?;
    let opts = Opts {
        target,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        grace: Duration::from_millis(args.grace_ms),
        quiet: args.quiet,
    };
    match &args.mode {
        Mode::Pub { subject, msgs, size, pubs } => bench_pub(&opts, subject, *msgs, *size, (*pubs).max(1)),
        Mode::Pubsub { subject, msgs, size } => bench_fanout(&opts, "pubsub", subject, *msgs, *size, 1),
        Mode::Fanout { subject, msgs, size, subs } => {
            bench_fanout(&opts, "fanout", subject, *msgs, *size, (*subs).max(1))
        }
        Mode::Req { subject, msgs, size, warmup } => bench_req(&opts, subject, *msgs, *size, *warmup),
        Mode::Ack { subject, msgs, size, pubs, window, ack, batch, warmup } => {
            let shape = AckShape { size: *size, window: (*window).max(1), ack: *ack, batch: *batch, warmup: *warmup };
            bench_ack(&opts, subject, *msgs, (*pubs).max(1), shape)
        }
        Mode::Subs { count, conns, prefix, server_pid } => {
            bench_subs(&opts, *count, (*conns).max(1), prefix, *server_pid)
        }
    }
}

struct Opts {
    target: Target,
    timeout: Duration,
    grace: Duration,
    quiet: bool,
}

// ---------------------------------------------------------------- the URL

/// Where to connect, from `--url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (4222 if the URL has none).
    pub port: u16,
    /// `user:pass@`.
    pub user: Option<(String, String)>,
    /// `token@`.
    pub token: Option<String>,
}

impl Target {
    /// Parses `nats://[user:pass@ | token@]host[:port]` (the scheme is
    /// optional; `[::1]:4222` for IPv6).
    pub fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("invalid --url {url:?}: {why}");
        let rest = match url.split_once("://") {
            Some(("nats", rest)) => rest,
            Some((scheme, _)) => return Err(bad(&format!("scheme {scheme}:// is not supported (use nats://)"))),
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("expected :port after ]"))?)),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad(&format!("port {p:?} is not a number 0-65535")))?,
            None => 4222,
        };
        let (user, token) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (Some((name.to_owned(), pass.to_owned())), None),
                None => (None, Some(u.to_owned())),
            },
        };
        Ok(Target { host: host.to_owned(), port, user, token })
    }

    /// The URL without credentials, for messages and reports.
    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("nats://[{}]:{}", self.host, self.port)
        } else {
            format!("nats://{}:{}", self.host, self.port)
        }
    }
}

// ---------------------------------------------------------- a connection

/// One blocking client connection.
struct Conn {
    read: TcpStream,
    w: BufWriter<TcpStream>,
    parser: ServerOpParser,
    rbuf: Vec<u8>,
    info: Info,
    pings: u64,
    pongs: u64,
    timeout: Duration,
    /// When a read last returned bytes.
    last_read: Instant,
    url: String,
}

impl Conn {
    /// Connects, reads `INFO`, sends `CONNECT` and waits for the `PONG` of a
    /// `PING` (so an authentication error shows here).
    fn open(opts: &Opts, name: &str) -> Result<Conn, String> {
        Conn::open_verbose(opts, name, false)
    }

    /// [`Conn::open`], in verbose mode if `verbose` (the server then
    /// answers `+OK` to every operation, `CONNECT` included).
    fn open_verbose(opts: &Opts, name: &str, verbose: bool) -> Result<Conn, String> {
        let t = &opts.target;
        let url = t.display();
        let addrs: Vec<_> =
            (t.host.as_str(), t.port).to_socket_addrs().map_err(|e| format!("cannot resolve {url}: {e}"))?.collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, opts.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(stream) = stream else {
            let why = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
            return Err(format!("cannot connect to {url}: {why} (is the server running?)"));
        };
        let io_err = |e: io::Error| format!("{url}: {e}");
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_read_timeout(Some(POLL)).map_err(io_err)?;
        stream.set_write_timeout(Some(opts.timeout)).map_err(io_err)?;
        let w = BufWriter::with_capacity(WRITE_BUFFER, stream.try_clone().map_err(io_err)?);
        let mut conn = Conn {
            read: stream,
            w,
            parser: ServerOpParser::new(),
            rbuf: vec![0; READ_BUFFER],
            info: Info::default(),
            pings: 0,
            pongs: 0,
            timeout: opts.timeout,
            last_read: Instant::now(),
            url,
        };
        match conn.next_op()? {
            ServerOp::Info(info) => conn.info = *info,
            other => return Err(format!("{}: expected INFO first, got {other:?}", conn.url)),
        }
        let connect = Connect {
            verbose,
            pedantic: false,
            name: Some(name.to_owned()),
            lang: Some("rust".to_owned()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            user: t.user.as_ref().map(|(u, _)| u.clone()),
            pass: t.user.as_ref().map(|(_, p)| p.clone()),
            auth_token: t.token.clone(),
            ..Connect::default()
        };
        let mut buf = BytesMut::new();
        write_connect(&mut buf, &connect);
        conn.write(&buf)?;
        conn.ping()?;
        conn.flush()?;
        conn.wait_pongs(0)?;
        Ok(conn)
    }

    /// `name version` from the server's `INFO`.
    fn server(&self) -> String {
        server_label(&self.info)
    }

    fn check_size(&self, size: usize) -> Result<(), String> {
        if size as u64 > self.info.max_payload {
            return Err(format!("--size {size} is over the server's max_payload ({})", self.info.max_payload));
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.w.write_all(bytes).map_err(|e| self.io_error("writing", e))
    }

    fn flush(&mut self) -> Result<(), String> {
        self.w.flush().map_err(|e| self.io_error("writing", e))
    }

    fn ping(&mut self) -> Result<(), String> {
        self.pings += 1;
        let mut b = BytesMut::new();
        write_ping(&mut b);
        self.write(&b)
    }

    fn io_error(&self, doing: &str, e: io::Error) -> String {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "{}: {doing}: nothing moved for {} s (server stalled? raise --timeout-secs)",
                self.url,
                self.timeout.as_secs()
            ),
            _ => format!("{}: {doing}: {e}", self.url),
        }
    }

    /// The next operation, reading as needed; `None` when [`POLL`] passed
    /// without a byte. Answers the server's `PING`s, counts `PONG`s (and
    /// returns them), and turns `-ERR` into an error.
    fn poll_op(&mut self) -> Result<Option<ServerOp>, String> {
        loop {
            match self.parsed_op()? {
                Some(op) => return Ok(Some(op)),
                None => {
                    let n = match self.read.read(&mut self.rbuf) {
                        Ok(0) => return Err(format!("{}: the server closed the connection", self.url)),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            return Ok(None);
                        }
                        Err(e) => return Err(self.io_error("reading", e)),
                    };
                    self.last_read = Instant::now();
                    self.parser.push(&self.rbuf[..n]);
                }
            }
        }
    }

    /// The next operation among the bytes already read, without reading:
    /// answers the server's `PING`s, counts `PONG`s (and returns them), and
    /// turns `-ERR` into an error.
    fn parsed_op(&mut self) -> Result<Option<ServerOp>, String> {
        loop {
            match self.parser.next() {
                Some(Ok(ServerOp::Ping)) => {
                    let mut b = BytesMut::new();
                    write_pong(&mut b);
                    self.write(&b)?;
                    self.flush()?;
                }
                Some(Ok(ServerOp::Pong)) => {
                    self.pongs += 1;
                    return Ok(Some(ServerOp::Pong));
                }
                Some(Ok(ServerOp::Err(text))) => {
                    return Err(format!("{}: the server answered -ERR '{text}'", self.url));
                }
                Some(Ok(op)) => return Ok(Some(op)),
                Some(Err(e)) => return Err(format!("{}: protocol error from the server: {e}", self.url)),
                None => return Ok(None),
            }
        }
    }

    /// How long nothing was read, counting from `since` at the latest.
    fn quiet(&self, since: Instant) -> Duration {
        self.last_read.max(since).elapsed()
    }

    fn stalled(&self) -> String {
        format!(
            "{}: reading: nothing arrived for {} s (server stalled? raise --timeout-secs)",
            self.url,
            self.timeout.as_secs()
        )
    }

    /// The next operation, waiting up to the timeout for it to start.
    fn next_op(&mut self) -> Result<ServerOp, String> {
        let since = Instant::now();
        loop {
            if let Some(op) = self.poll_op()? {
                return Ok(op);
            }
            if self.quiet(since) >= self.timeout {
                return Err(self.stalled());
            }
        }
    }

    /// Reads until at most `outstanding` `PING`s are unanswered. Messages
    /// read meanwhile are dropped.
    fn wait_pongs(&mut self, outstanding: u64) -> Result<(), String> {
        while self.pings - self.pongs > outstanding {
            self.next_op()?;
        }
        Ok(())
    }

    /// `SUB subject sid`.
    fn sub(&mut self, subject: &str, sid: u64) -> Result<(), String> {
        let mut b = BytesMut::new();
        write_sub(&mut b, subject.as_bytes(), None, sid.to_string().as_bytes());
        self.write(&b)
    }

    /// A handle that can shut the socket down from another thread.
    fn handle(&self) -> Result<TcpStream, String> {
        self.read.try_clone().map_err(|e| format!("{}: {e}", self.url))
    }
}

/// `name version [go]` from an `INFO`; a long name (nats-server's default
/// is its 56-character id) is cut to 12 characters.
pub fn server_label(info: &Info) -> String {
    let name = if info.server_name.is_empty() { &info.server_id } else { &info.server_name };
    let name: String =
        if name.chars().count() > 12 { name.chars().take(12).chain(['…']).collect() } else { name.clone() };
    let mut label = format!("{name} {}", info.version);
    if let Some(go) = &info.go {
        label = format!("{label} {go}");
    }
    label.trim().to_owned()
}

// --------------------------------------------------------- shared state

/// What the threads of one run share: progress, the first error, and the
/// sockets to shut down when one thread fails (so no other one waits for
/// its timeout).
#[derive(Default)]
struct Shared {
    progress: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    sockets: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn watch(&self, conn: &Conn) -> Result<(), String> {
        let h = conn.handle()?;
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        Ok(())
    }

    /// Records the first error and unblocks every other thread.
    fn fail(&self, e: String) {
        let mut first = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        drop(first);
        if !self.failed.swap(true, Ordering::SeqCst) {
            for s in self.sockets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Runs `f`, recording its error.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Option<T> {
        match f() {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    fn result(&self) -> Result<(), String> {
        match self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn progress_bar(quiet: bool, len: u64, what: &str) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(len) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} {msg}")
            .expect("valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Updates `bar` from `shared.progress` until every thread is done.
fn follow<T>(bar: &ProgressBar, shared: &Shared, handles: &[std::thread::ScopedJoinHandle<'_, T>]) {
    while !handles.iter().all(|h| h.is_finished()) {
        bar.set_position(shared.progress.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

// ------------------------------------------------------------ publishing

/// Publishes `msgs` copies of one message, pipelined; returns when the
/// server answered the final `PING`.
fn publish(conn: &mut Conn, subject: &str, size: usize, msgs: u64, progress: &AtomicU64) -> Result<(), String> {
    let mut frame = BytesMut::new();
    write_pub(&mut frame, subject.as_bytes(), None, &payload(size));
    let per_batch = (BATCH_BYTES / frame.len()).max(1);
    let batch = frame.repeat(per_batch);
    let batches_per_ping = (PING_EVERY_BYTES / batch.len()).max(1);
    let (mut sent, mut batches, mut reported) = (0u64, 0usize, 0u64);
    while sent < msgs {
        let k = (per_batch as u64).min(msgs - sent);
        conn.write(&batch[..k as usize * frame.len()])?;
        sent += k;
        batches += 1;
        if batches.is_multiple_of(batches_per_ping) {
            conn.ping()?;
            conn.flush()?;
            conn.wait_pongs(MAX_PINGS_OUT)?;
            progress.fetch_add(sent - reported, Ordering::Relaxed);
            reported = sent;
        }
    }
    conn.ping()?;
    conn.flush()?;
    conn.wait_pongs(0)?;
    progress.fetch_add(sent - reported, Ordering::Relaxed);
    Ok(())
}

fn rates(msgs: u64, size: usize, secs: f64) -> (f64, f64) {
    let secs = secs.max(1e-9);
    (msgs as f64 / secs, msgs as f64 * size as f64 / secs / 1e6)
}

fn bench_pub(opts: &Opts, subject: &str, msgs: u64, size: usize, pubs: usize) -> Result<Report, String> {
    let mut conns = Vec::with_capacity(pubs);
    for i in 0..pubs {
        conns.push(Conn::open(opts, &format!("kaelix-bench-pub-{i}"))?);
    }
    conns[0].check_size(size)?;
    let server = conns[0].server();
    let shared = Shared::default();
    for c in &conns {
        shared.watch(c)?;
    }
    let bar = progress_bar(opts.quiet, msgs, "published");
    let start_line = Barrier::new(pubs + 1);
    let mut started = None;
    let ends: Vec<Option<Instant>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                let share = msgs / pubs as u64 + u64::from((i as u64) < msgs % pubs as u64);
                let (shared, start_line) = (&shared, &start_line);
                s.spawn(move || {
                    start_line.wait();
                    shared.guard(|| publish(conn, subject, size, share, &shared.progress).map(|()| Instant::now()))
                })
            })
            .collect();
        start_line.wait();
        started = Some(Instant::now());
        follow(&bar, &shared, &handles);
        handles.into_iter().map(|h| h.join().expect("publisher thread")).collect()
    });
    shared.result()?;
    let end = ends.into_iter().flatten().max().expect("every publisher finished");
    let secs = (end - started.expect("started")).as_secs_f64();
    let (msgs_per_sec, mb_per_sec) = rates(msgs, size, secs);
    Ok(Report {
        mode: "pub".into(),
        url: opts.target.display(),
        server,
        msgs,
        size,
        pubs,
        subs: 0,
        secs,
        msgs_per_sec,
        mb_per_sec,
        ..Report::default()
    })
}

// ------------------------------------------------------ pubsub and fanout

/// What one subscriber received.
struct Received {
    msgs: u64,
    /// When the read that brought the last message returned.
    last: Instant,
}

/// Reads until `msgs` messages arrived, or until nothing arrived for
/// `grace` once the publisher is done (the server lost some).
fn receive(
    conn: &mut Conn,
    msgs: u64,
    progress: &AtomicU64,
    publisher_done: &AtomicBool,
    grace: Duration,
) -> Result<Received, String> {
    let mut got = 0u64;
    let mut reported = 0u64;
    let mut last = Instant::now();
    let since = Instant::now();
    while got < msgs {
        match conn.poll_op() {
            Ok(Some(ServerOp::Msg(_))) => {
                got += 1;
                last = conn.last_read;
                if got - reported == 4096 {
                    progress.fetch_add(got - reported, Ordering::Relaxed);
                    reported = got;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let quiet = conn.quiet(since);
                if publisher_done.load(Ordering::Acquire) && quiet >= grace {
                    break;
                }
                if quiet >= conn.timeout {
                    return Err(format!("subscriber: {} after {got} of {msgs} messages", conn.stalled()));
                }
            }
            Err(e) => {
                return Err(format!(
                    "subscriber: {e} after {got} of {msgs} messages (a server closes a subscriber that falls \
                     too far behind: slow consumer)"
                ));
            }
        }
    }
    progress.fetch_add(got - reported, Ordering::Relaxed);
    Ok(Received { msgs: got, last })
}

fn bench_fanout(opts: &Opts, mode: &str, subject: &str, msgs: u64, size: usize, subs: usize) -> Result<Report, String> {
    let shared = Shared::default();
    let mut readers = Vec::with_capacity(subs);
    for i in 0..subs {
        let mut c = Conn::open(opts, &format!("kaelix-bench-sub-{i}"))?;
        c.sub(subject, 1)?;
        c.ping()?;
        c.flush()?;
        c.wait_pongs(0)?;
        shared.watch(&c)?;
        readers.push(c);
    }
    let mut publisher = Conn::open(opts, "kaelix-bench-pub")?;
    publisher.check_size(size)?;
    shared.watch(&publisher)?;
    let server = publisher.server();
    let delivered = msgs * subs as u64;
    let bar = progress_bar(opts.quiet, delivered, "delivered");
    let publisher_done = AtomicBool::new(false);
    let grace = opts.grace;
    let started = Instant::now();
    let received: Vec<Option<Received>> = std::thread::scope(|s| {
        let mut handles: Vec<_> = readers
            .iter_mut()
            .map(|conn| {
                let (shared, done) = (&shared, &publisher_done);
                s.spawn(move || shared.guard(|| receive(conn, msgs, &shared.progress, done, grace).map(Some)))
            })
            .collect();
        let (shared_ref, done) = (&shared, &publisher_done);
        let publisher = &mut publisher;
        handles.push(s.spawn(move || {
            let ignored = AtomicU64::new(0);
            let published = shared_ref.guard(|| publish(publisher, subject, size, msgs, &ignored));
            done.store(true, Ordering::Release);
            published.map(|()| None)
        }));
        follow(&bar, &shared, &handles);
        handles.into_iter().take(subs).map(|h| h.join().expect("subscriber thread").flatten()).collect()
    });
    shared.result()?;
    let received: Vec<Received> = received.into_iter().flatten().collect();
    let end = received.iter().map(|r| r.last).max().expect("every subscriber finished");
    let got: u64 = received.iter().map(|r| r.msgs).sum();
    let secs = end.saturating_duration_since(started).as_secs_f64();
    let (msgs_per_sec, mb_per_sec) = rates(got, size, secs);
    Ok(Report {
        mode: mode.into(),
        url: opts.target.display(),
        server,
        msgs,
        size,
        pubs: 1,
        subs,
        secs,
        msgs_per_sec,
        mb_per_sec,
        lost: delivered - got,
        ..Report::default()
    })
}

// ----------------------------------------------------------- request-reply

/// Answers `total` requests, each with its own payload.
fn respond(conn: &mut Conn, total: u64) -> Result<(), String> {
    let mut answered = 0;
    let mut out = BytesMut::new();
    while answered < total {
        if let ServerOp::Msg(m) = conn.next_op()? {
            let Some(reply) = m.reply else { continue };
            out.clear();
            write_pub(&mut out, &reply, None, &m.payload);
            conn.write(&out)?;
            conn.flush()?;
            answered += 1;
        }
    }
    Ok(())
}

/// Sends `warmup + msgs` requests one at a time; records the last `msgs`
/// round trips (nanoseconds).
fn request(
    conn: &mut Conn,
    subject: &str,
    inbox: &str,
    size: usize,
    warmup: u64,
    msgs: u64,
    progress: &AtomicU64,
) -> Result<(Histogram<u64>, Duration), String> {
    let mut frame = BytesMut::new();
    write_pub(&mut frame, subject.as_bytes(), Some(inbox.as_bytes()), &payload(size));
    let mut hist = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut measured_from = Instant::now();
    for i in 0..warmup + msgs {
        if i == warmup {
            measured_from = Instant::now();
        }
        let t0 = Instant::now();
        conn.write(&frame)?;
        conn.flush()?;
        loop {
            if let ServerOp::Msg(_) = conn.next_op().map_err(|e| format!("requester: {e} (request {i})"))? {
                break;
            }
        }
        if i >= warmup {
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            hist.record(ns.max(1)).expect("auto-resizing histogram");
            progress.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok((hist, measured_from.elapsed()))
}

/// Percentiles of a histogram of nanoseconds, in microseconds.
pub fn summarize(hist: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1e3;
    Latency {
        count: hist.len(),
        p50: us(hist.value_at_quantile(0.50)),
        p99: us(hist.value_at_quantile(0.99)),
        p999: us(hist.value_at_quantile(0.999)),
        max: us(hist.max()),
        mean: hist.mean() / 1e3,
    }
}

fn bench_req(opts: &Opts, subject: &str, msgs: u64, size: usize, warmup: u64) -> Result<Report, String> {
    let shared = Shared::default();
    let mut responder = Conn::open(opts, "kaelix-bench-responder")?;
    responder.check_size(size)?;
    responder.sub(subject, 1)?;
    responder.ping()?;
    responder.flush()?;
    responder.wait_pongs(0)?;
    shared.watch(&responder)?;
    let inbox = format!("_INBOX.kaelix_bench.{}", std::process::id());
    let mut requester = Conn::open(opts, "kaelix-bench-requester")?;
    requester.sub(&inbox, 1)?;
    requester.ping()?;
    requester.flush()?;
    requester.wait_pongs(0)?;
    shared.watch(&requester)?;
    let server = requester.server();
    let bar = progress_bar(opts.quiet, msgs, "requests");
    let total = warmup + msgs;
    let measured = std::thread::scope(|s| {
        let shared = &shared;
        let (responder, requester) = (&mut responder, &mut requester);
        let handles = vec![
            s.spawn(move || shared.guard(|| respond(responder, total).map(|()| None))),
            s.spawn(move || {
                shared.guard(|| request(requester, subject, &inbox, size, warmup, msgs, &shared.progress).map(Some))
            }),
        ];
        follow(&bar, shared, &handles);
        handles.into_iter().filter_map(|h| h.join().expect("request thread").flatten()).next()
    });
    shared.result()?;
    let (hist, took) = measured.expect("the requester finished");
    let secs = took.as_secs_f64();
    let (msgs_per_sec, mb_per_sec) = rates(msgs, size, secs);
    Ok(Report {
        mode: "req".into(),
        url: opts.target.display(),
        server,
        msgs,
        size,
        pubs: 1,
        subs: 1,
        secs,
        msgs_per_sec,
        mb_per_sec,
        latency_us: Some(summarize(&hist)),
        ..Report::default()
    })
}

// --------------------------------------------------- acknowledged publishing

/// The `ack` mode's settings, the same for every connection.
#[derive(Clone, Copy, Debug)]
struct AckShape {
    size: usize,
    window: usize,
    ack: AckKind,
    batch: bool,
    warmup: u64,
}

/// A JetStream publish acknowledgement as it travels:
/// `{"stream":"S","seq":7}` (with `"duplicate"` or `"domain"` at times),
/// or `{"error":{"code":503,"err_code":10077,"description":"…"}}`.
#[derive(serde::Deserialize)]
struct PubAckJson {
    stream: Option<String>,
    seq: Option<u64>,
    error: Option<ApiErrorJson>,
}

#[derive(serde::Deserialize)]
struct ApiErrorJson {
    code: Option<u64>,
    err_code: Option<u64>,
    description: Option<String>,
}

/// The stream and sequence a JetStream `PubAck` reports, or why the body
/// is no acknowledgement: an API error (in JetStream's words, with its
/// codes), or something else than a PubAck (say, a core NATS responder's
/// answer).
pub fn parse_pub_ack(body: &[u8]) -> Result<(String, u64), String> {
    let shown = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    let ack: PubAckJson =
        serde_json::from_slice(body).map_err(|e| format!("not a JetStream PubAck ({e}): {:?}", shown()))?;
    if let Some(err) = ack.error {
        let code = |c: Option<u64>| c.map_or_else(|| "?".to_owned(), |c| c.to_string());
        return Err(format!(
            "JetStream refused the publish: {} (code {}, err_code {})",
            err.description.as_deref().unwrap_or("no description"),
            code(err.code),
            code(err.err_code)
        ));
    }
    match (ack.stream, ack.seq) {
        (Some(stream), Some(seq)) if !stream.is_empty() => Ok((stream, seq)),
        _ => Err(format!("a PubAck without stream and seq: {:?}", shown())),
    }
}

/// What an operation acknowledges under `ack`: `Ok(None)` for one that
/// acknowledges nothing (an `INFO`; a `PONG` unless `ack` is `ping`);
/// `inbox` is the reply prefix (the publish's number follows it).
pub fn acknowledged(ack: AckKind, op: &ServerOp, inbox: &str) -> Result<Option<Acked>, String> {
    match (ack, op) {
        (AckKind::Ok, ServerOp::Ok) => Ok(Some(Acked::Oldest)),
        (AckKind::Ping, ServerOp::Pong) => Ok(Some(Acked::PingGroup)),
        (AckKind::Reply, ServerOp::Msg(m)) => {
            let subject = String::from_utf8_lossy(&m.subject);
            let n = subject
                .strip_prefix(inbox)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("a message on {subject:?}, not on this connection's inbox {inbox}<n>"))?;
            parse_pub_ack(&m.payload).map_err(|e| format!("publish {n}: {e}"))?;
            Ok(Some(Acked::Publish(n)))
        }
        _ => Ok(None),
    }
}

/// Publishes numbers `first .. first + count` keeping up to `shape.window`
/// unacknowledged; with `hist`, records each one's publish →
/// acknowledgement time (nanoseconds). Returns once all are acknowledged.
#[allow(clippy::too_many_arguments)] // one connection's whole run, spelled out
fn publish_acked(
    conn: &mut Conn,
    subject: &str,
    inbox: &str,
    body: &[u8],
    shape: AckShape,
    first: u64,
    count: u64,
    mut hist: Option<&mut Histogram<u64>>,
    progress: &AtomicU64,
) -> Result<(), String> {
    let end = first + count;
    // Send times of the publishes from `base` on; `None` once acknowledged
    // (JetStream may acknowledge out of order; the front is popped as soon
    // as it is acknowledged, so the front is always in flight).
    let mut slots: VecDeque<Option<Instant>> = VecDeque::with_capacity(shape.window);
    // `ping`: how many publishes each unanswered PING follows.
    let mut groups: VecDeque<u64> = VecDeque::new();
    let (mut base, mut sent, mut pending, mut acked) = (first, first, 0usize, 0u64);
    let mut frame = BytesMut::new();
    let mut reply = String::new();
    while acked < count {
        let room = if shape.batch { pending == 0 } else { pending < shape.window };
        if room && sent < end {
            let group_from = sent;
            // One clock reading for the publishes of one write.
            let now = Instant::now();
            while pending < shape.window && sent < end {
                frame.clear();
                match shape.ack {
                    AckKind::Reply => {
                        reply.clear();
                        reply.push_str(inbox);
                        reply.push_str(&sent.to_string());
                        write_pub(&mut frame, subject.as_bytes(), Some(reply.as_bytes()), body);
                    }
                    AckKind::Ok | AckKind::Ping => write_pub(&mut frame, subject.as_bytes(), None, body),
                }
                conn.write(&frame)?;
                slots.push_back(Some(now));
                sent += 1;
                pending += 1;
            }
            if shape.ack == AckKind::Ping {
                conn.ping()?;
                groups.push_back(sent - group_from);
            }
            conn.flush()?;
        }
        let waiting =
            |e: String| format!("{e} (waiting for acknowledgements: {pending} in flight, {acked} of {count} done)");
        let mut op = Some(conn.next_op().map_err(waiting)?);
        // Everything already read, before writing again.
        while let Some(o) = op {
            op = conn.parsed_op()?;
            // The numbers this operation acknowledges.
            let numbers = match acknowledged(shape.ack, &o, inbox)? {
                None => continue,
                Some(Acked::Publish(n)) => n..n + 1,
                // In order: the oldest in flight is the front.
                Some(Acked::Oldest) if pending > 0 => base..base + 1,
                Some(Acked::PingGroup) if !groups.is_empty() => {
                    let g = groups.pop_front().expect("not empty");
                    base..base + g
                }
                Some(_) => return Err(format!("{}: {o:?} with no publish in flight", conn.url)),
            };
            let now = Instant::now();
            for n in numbers {
                let slot = n.checked_sub(base).and_then(|i| slots.get_mut(i as usize));
                let Some(since) = slot.and_then(Option::take) else {
                    return Err(format!("{}: acknowledgement of publish {n}, which is not in flight", conn.url));
                };
                if let Some(h) = hist.as_deref_mut() {
                    let ns = u64::try_from((now - since).as_nanos()).unwrap_or(u64::MAX);
                    h.record(ns.max(1)).expect("auto-resizing histogram");
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                pending -= 1;
                acked += 1;
            }
            while slots.front().is_some_and(Option::is_none) {
                slots.pop_front();
                base += 1;
            }
        }
    }
    Ok(())
}

fn bench_ack(opts: &Opts, subject: &str, msgs: u64, pubs: usize, shape: AckShape) -> Result<Report, String> {
    let mut conns = Vec::with_capacity(pubs);
    for i in 0..pubs {
        conns.push(Conn::open_verbose(opts, &format!("kaelix-bench-ack-{i}"), shape.ack == AckKind::Ok)?);
    }
    conns[0].check_size(shape.size)?;
    let server = conns[0].server();
    let inboxes: Vec<String> = (0..pubs).map(|i| format!("_INBOX.kaelix_bench_{}_{i}.", std::process::id())).collect();
    let shared = Shared::default();
    for (conn, inbox) in conns.iter_mut().zip(&inboxes) {
        if shape.ack == AckKind::Reply {
            conn.sub(&format!("{inbox}*"), 1)?;
            conn.ping()?;
            conn.flush()?;
            conn.wait_pongs(0)?;
        }
        shared.watch(conn)?;
    }
    let body = payload(shape.size);
    let bar = progress_bar(opts.quiet, msgs, "acknowledged");
    let start_line = Barrier::new(pubs + 1);
    let mut started = None;
    let done: Vec<Option<(Histogram<u64>, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .zip(&inboxes)
            .enumerate()
            .map(|(i, (conn, inbox))| {
                let share = msgs / pubs as u64 + u64::from((i as u64) < msgs % pubs as u64);
                let (shared, start_line, body) = (&shared, &start_line, &body);
                s.spawn(move || {
                    let unmeasured = AtomicU64::new(0);
                    let warm = shared
                        .guard(|| publish_acked(conn, subject, inbox, body, shape, 0, shape.warmup, None, &unmeasured));
                    // Every thread reaches the start line, failed or not,
                    // so no one waits there forever.
                    start_line.wait();
                    warm?;
                    shared.guard(|| {
                        let mut hist = Histogram::<u64>::new(3).expect("3 significant digits is valid");
                        let first = shape.warmup;
                        publish_acked(
                            conn,
                            subject,
                            inbox,
                            body,
                            shape,
                            first,
                            share,
                            Some(&mut hist),
                            &shared.progress,
                        )?;
                        Ok((hist, Instant::now()))
                    })
                })
            })
            .collect();
        start_line.wait();
        started = Some(Instant::now());
        follow(&bar, &shared, &handles);
        handles.into_iter().map(|h| h.join().expect("publisher thread")).collect()
    });
    shared.result()?;
    let mut hist = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut end = started.expect("started");
    for (h, e) in done.into_iter().flatten() {
        hist.add(&h).expect("auto-resizing histogram");
        end = end.max(e);
    }
    let secs = (end - started.expect("started")).as_secs_f64();
    let (msgs_per_sec, mb_per_sec) = rates(msgs, shape.size, secs);
    Ok(Report {
        mode: "ack".into(),
        url: opts.target.display(),
        server,
        msgs,
        size: shape.size,
        pubs,
        subs: 0,
        secs,
        msgs_per_sec,
        mb_per_sec,
        latency_us: Some(summarize(&hist)),
        window: Some(shape.window),
        ack: Some(shape.ack.name().to_owned()),
        batch: Some(shape.batch),
        ..Report::default()
    })
}

// ----------------------------------------------------------- subscriptions

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib)
}

fn read_rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("--server-pid {pid}: reading {path}: {e}"))?;
    parse_vmrss(&text).ok_or_else(|| format!("--server-pid {pid}: no VmRSS line in {path}"))
}

/// Bytes of resident memory per subscription.
pub fn bytes_per_sub(before_kib: u64, after_kib: u64, count: u64) -> f64 {
    (after_kib as f64 - before_kib as f64) * 1024.0 / count.max(1) as f64
}

fn bench_subs(opts: &Opts, count: u64, conns: usize, prefix: &str, pid: Option<u32>) -> Result<Report, String> {
    let mut subscribers = Vec::with_capacity(conns);
    for i in 0..conns {
        subscribers.push(Conn::open(opts, &format!("kaelix-bench-subs-{i}"))?);
    }
    let mut checker = Conn::open(opts, "kaelix-bench-subs-check")?;
    let server = checker.server();
    let rss_before = pid.map(read_rss).transpose()?;
    let bar = progress_bar(opts.quiet, count, "subscribed");
    let owner = |i: u64| (i % conns as u64) as usize;
    let started = Instant::now();
    for i in 0..count {
        subscribers[owner(i)].sub(&format!("{prefix}.{i}"), i)?;
        if i % 4096 == 0 {
            bar.set_position(i);
        }
    }
    for c in &mut subscribers {
        c.ping()?;
        c.flush()?;
    }
    for c in &mut subscribers {
        c.wait_pongs(0)?;
    }
    let took = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let rss_after = pid.map(read_rss).transpose()?;

    // One message still routes: from another connection to the middle one.
    let routed = if count == 0 {
        false
    } else {
        let k = count / 2;
        let mut b = BytesMut::new();
        write_pub(&mut b, format!("{prefix}.{k}").as_bytes(), None, b"check");
        checker.write(&b)?;
        checker.ping()?;
        checker.flush()?;
        checker.wait_pongs(0)?;
        let sid = k.to_string();
        let c = &mut subscribers[owner(k)];
        loop {
            match c.next_op() {
                Ok(ServerOp::Msg(m)) if m.sid == sid.as_bytes() => break true,
                Ok(_) => {}
                Err(e) => return Err(format!("the check message to {prefix}.{k} did not arrive: {e}")),
            }
        }
    };
    let bytes = rss_before.zip(rss_after).map(|(b, a)| bytes_per_sub(b, a, count));
    Ok(Report {
        mode: "subs".into(),
        url: opts.target.display(),
        server,
        subs: conns,
        secs: took,
        subscriptions: Some(SubsReport {
            count,
            conns,
            subs_per_sec: count as f64 / took.max(1e-9),
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            bytes_per_sub: bytes,
            routed,
        }),
        ..Report::default()
    })
}

// ------------------------------------------------------------- the table

/// `1234567.8` → `1,234,568`.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0.0 && digits != "0" {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table with a header row, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The human result: a line naming the server, then the table.
pub fn render(r: &Report) -> String {
    let mut out = format!("server {} ({})\n", r.url, if r.server.is_empty() { "?" } else { &r.server });
    if let Some(s) = &r.subscriptions {
        let kib = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |k| format!("{} KiB", thousands(k as f64)));
        out += &table(
            &["mode", "subs", "conns", "time s", "subs/s", "RSS before", "RSS after", "bytes/sub", "routed"],
            &[vec![
                r.mode.clone(),
                thousands(s.count as f64),
                s.conns.to_string(),
                format!("{:.2}", r.secs),
                thousands(s.subs_per_sec),
                kib(s.rss_before_kib),
                kib(s.rss_after_kib),
                s.bytes_per_sub.map_or_else(|| "-".to_owned(), |b| format!("{b:.0}")),
                if s.routed { "yes" } else { "no" }.to_owned(),
            ]],
        );
        if s.rss_before_kib.is_none() {
            out += "(no --server-pid: memory not measured)\n";
        }
        return out;
    }
    let lat = |f: fn(&Latency) -> f64| r.latency_us.as_ref().map_or_else(|| "-".to_owned(), |l| format!("{:.1}", f(l)));
    out += &table(
        &[
            "mode",
            "pubs",
            "subs",
            "msgs",
            "size",
            "time s",
            "msgs/s",
            "MB/s",
            "lost",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
        ],
        &[vec![
            match (&r.window, &r.ack) {
                (Some(w), Some(ack)) if r.batch == Some(true) => format!("{} ({ack}, batches of {w})", r.mode),
                (Some(w), Some(ack)) => format!("{} ({ack}, window {w})", r.mode),
                _ => r.mode.clone(),
            },
            r.pubs.to_string(),
            r.subs.to_string(),
            thousands(r.msgs as f64),
            r.size.to_string(),
            format!("{:.2}", r.secs),
            thousands(r.msgs_per_sec),
            format!("{:.1}", r.mb_per_sec),
            if matches!(r.mode.as_str(), "pubsub" | "fanout") { thousands(r.lost as f64) } else { "-".to_owned() },
            lat(|l| l.p50),
            lat(|l| l.p99),
            lat(|l| l.p999),
            lat(|l| l.max),
        ]],
    );
    if r.lost > 0 {
        let expected = r.msgs * r.subs as u64;
        out += &format!(
            "LOST {} of {} deliveries ({:.1}%): the server dropped them (msgs/s counts what arrived)\n",
            thousands(r.lost as f64),
            thousands(expected as f64),
            r.lost as f64 * 100.0 / expected.max(1) as f64
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(clap::Subcommand)]
    enum Top {
        Bench(BenchArgs),
    }

    fn parse(args: &[&str]) -> BenchArgs {
        let Top::Bench(b) = Cli::try_parse_from([&["kaelix", "bench"], args].concat()).unwrap().cmd;
        b
    }

    #[test]
    fn defaults() {
        let b = parse(&["pub"]);
        assert_eq!(b.url, "nats://127.0.0.1:4222");
        assert!(!b.json && !b.quiet);
        assert_eq!(b.timeout_secs, 30);
        assert_eq!(b.grace_ms, 2000);
        assert_eq!(b.mode, Mode::Pub { subject: "bench".into(), msgs: 1_000_000, size: 16, pubs: 1 });
        assert_eq!(parse(&["pubsub"]).mode, Mode::Pubsub { subject: "bench".into(), msgs: 1_000_000, size: 16 });
        assert_eq!(parse(&["fanout"]).mode, Mode::Fanout { subject: "bench".into(), msgs: 100_000, size: 16, subs: 8 });
        assert_eq!(
            parse(&["req"]).mode,
            Mode::Req { subject: "bench.req".into(), msgs: 10_000, size: 16, warmup: 100 }
        );
        assert_eq!(
            parse(&["subs"]).mode,
            Mode::Subs { count: 100_000, conns: 1, prefix: "s".into(), server_pid: None }
        );
    }

    #[test]
    fn flags_anywhere() {
        let b =
            parse(&["--url", "nats://h:1", "pub", "foo.bar", "--msgs", "5", "--size", "256", "--pubs", "2", "--json"]);
        assert_eq!(b.url, "nats://h:1");
        assert!(b.json);
        assert_eq!(b.mode, Mode::Pub { subject: "foo.bar".into(), msgs: 5, size: 256, pubs: 2 });
        let b = parse(&["subs", "--count", "7", "--server-pid", "42", "--quiet", "--timeout-secs", "3"]);
        assert!(b.quiet);
        assert_eq!(b.timeout_secs, 3);
        assert_eq!(b.mode, Mode::Subs { count: 7, conns: 1, prefix: "s".into(), server_pid: Some(42) });
        let bar = Cli::try_parse_from(["kaelix", "bench", "pub", "--msgs", "many"]);
        assert!(bar.is_err());
    }

    #[test]
    fn ack_mode_flags() {
        assert_eq!(
            parse(&["ack"]).mode,
            Mode::Ack {
                subject: "bench".into(),
                msgs: 100_000,
                size: 128,
                pubs: 1,
                window: 1,
                ack: AckKind::Reply,
                batch: false,
                warmup: 100
            }
        );
        let b = parse(&["ack", "orders", "--window", "64", "--ack", "ok", "--pubs", "4", "--warmup", "0", "--batch"]);
        assert_eq!(
            b.mode,
            Mode::Ack {
                subject: "orders".into(),
                msgs: 100_000,
                size: 128,
                pubs: 4,
                window: 64,
                ack: AckKind::Ok,
                batch: true,
                warmup: 0
            }
        );
        assert!(matches!(parse(&["ack", "--ack", "ping"]).mode, Mode::Ack { ack: AckKind::Ping, .. }));
        assert!(Cli::try_parse_from(["kaelix", "bench", "ack", "--ack", "pong"]).is_err());
    }

    #[test]
    fn pub_acks() {
        assert_eq!(parse_pub_ack(br#"{"stream":"BENCH","seq":7}"#), Ok(("BENCH".into(), 7)));
        // Fields JetStream adds at times (and any it may add later) are fine.
        assert_eq!(
            parse_pub_ack(br#"{"stream":"B","domain":"hub","seq":18446744073709551615,"duplicate":true}"#),
            Ok(("B".into(), u64::MAX))
        );
        let refused = parse_pub_ack(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"B","seq":0}"#,
        )
        .unwrap_err();
        assert_eq!(refused, "JetStream refused the publish: maximum messages exceeded (code 503, err_code 10077)");
        assert!(parse_pub_ack(br#"{"error":{}}"#).unwrap_err().contains("no description (code ?, err_code ?)"));
        // Not a PubAck: an echo from a core NATS responder, an empty body,
        // a PubAck missing its fields.
        for body in [&b"aaaa"[..], b"", br#"{"seq":1}"#, br#"{"stream":"","seq":1}"#, br#"{"stream":"B"}"#, b"[1]"] {
            assert!(parse_pub_ack(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn acknowledgements() {
        let msg = |subject: &str, body: &str| {
            ServerOp::Msg(kaelix_nats::Msg {
                subject: bytes::Bytes::from(subject.to_owned()),
                sid: bytes::Bytes::from_static(b"1"),
                reply: None,
                headers: None,
                payload: bytes::Bytes::from(body.to_owned()),
            })
        };
        let inbox = "_INBOX.k_1_0.";
        let ok = r#"{"stream":"S","seq":3}"#;
        // A PubAck names its publish by the inbox's suffix, in any order.
        assert_eq!(acknowledged(AckKind::Reply, &msg("_INBOX.k_1_0.12", ok), inbox), Ok(Some(Acked::Publish(12))));
        assert_eq!(acknowledged(AckKind::Reply, &msg("_INBOX.k_1_0.10", ok), inbox), Ok(Some(Acked::Publish(10))));
        for subject in ["_INBOX.k_1_1.3", "_INBOX.k_1_0.", "_INBOX.k_1_0.x", "bench"] {
            assert!(acknowledged(AckKind::Reply, &msg(subject, ok), inbox).is_err(), "{subject}");
        }
        let refused = r#"{"error":{"code":500,"description":"stream store failed"}}"#;
        let e = acknowledged(AckKind::Reply, &msg("_INBOX.k_1_0.4", refused), inbox).unwrap_err();
        assert!(e.starts_with("publish 4: JetStream refused the publish: stream store failed"), "{e}");
        // +OK acknowledges the oldest in flight, a PONG its PING's group.
        assert_eq!(acknowledged(AckKind::Ok, &ServerOp::Ok, inbox), Ok(Some(Acked::Oldest)));
        assert_eq!(acknowledged(AckKind::Ping, &ServerOp::Pong, inbox), Ok(Some(Acked::PingGroup)));
        // What acknowledges nothing in a mode is passed over.
        assert_eq!(acknowledged(AckKind::Ok, &msg("_INBOX.k_1_0.1", ok), inbox), Ok(None));
        assert_eq!(acknowledged(AckKind::Ok, &ServerOp::Pong, inbox), Ok(None));
        assert_eq!(acknowledged(AckKind::Ping, &ServerOp::Ok, inbox), Ok(None));
        assert_eq!(acknowledged(AckKind::Reply, &ServerOp::Ok, inbox), Ok(None));
        assert_eq!(acknowledged(AckKind::Reply, &ServerOp::Pong, inbox), Ok(None));
    }

    #[test]
    fn urls() {
        let t = |host: &str, port| Target { host: host.into(), port, user: None, token: None };
        assert_eq!(Target::parse("nats://127.0.0.1:4222").unwrap(), t("127.0.0.1", 4222));
        assert_eq!(Target::parse("localhost:5000").unwrap(), t("localhost", 5000));
        assert_eq!(Target::parse("nats://example").unwrap(), t("example", 4222));
        assert_eq!(Target::parse("nats://[::1]:7/").unwrap(), t("::1", 7));
        assert_eq!(Target::parse("[::1]").unwrap(), t("::1", 4222));
        let u = Target::parse("nats://al:se:cret@h:9").unwrap();
        assert_eq!(u.user, Some(("al".into(), "se:cret".into())));
        assert_eq!(u.display(), "nats://h:9");
        assert_eq!(Target::parse("nats://s3cr3t@h").unwrap().token.as_deref(), Some("s3cr3t"));
        assert_eq!(Target::parse("[::1]:2").unwrap().display(), "nats://[::1]:2");
        for bad in ["tls://h:1", "nats://:4222", "h:99999", "h:x", "[::1", "[::1]x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = summarize(&h);
        assert_eq!(l.count, 1000);
        // Three significant digits: within 0.1%.
        let near = |a: f64, b: f64| (a - b).abs() <= b * 1e-3;
        assert!(near(l.p50, 500.0), "{l:?}");
        assert!(near(l.p99, 990.0), "{l:?}");
        assert!(near(l.p999, 999.0), "{l:?}");
        assert!(near(l.max, 1000.0), "{l:?}");
        assert!(near(l.mean, 500.5), "{l:?}");
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(thousands(-0.2), "0");
        assert_eq!(bytes_per_sub(1000, 2000, 1024), 1000.0);
        assert_eq!(bytes_per_sub(2000, 1000, 1024), -1000.0);
        assert_eq!(bytes_per_sub(5, 5, 0), 0.0);
    }

    #[test]
    fn labels() {
        let info = |id: &str, name: &str, go: Option<&str>| Info {
            server_id: id.into(),
            server_name: name.into(),
            version: "2.15.1".into(),
            go: go.map(Into::into),
            ..Info::default()
        };
        assert_eq!(server_label(&info("X", "kaelix", None)), "kaelix 2.15.1");
        assert_eq!(server_label(&info("NBA66WTQ7AQLCTDSJRUQ", "", Some("go1.25"))), "NBA66WTQ7AQL… 2.15.1 go1.25");
    }

    #[test]
    fn vmrss() {
        let status = "Name:\tnats-server\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_vmrss(status), Some(12345));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert_eq!(parse_vmrss("VmRSS: lots\n"), None);
    }

    #[test]
    fn tables() {
        assert_eq!(table(&["a", "bbb"], &[vec!["1234".into(), "x".into()]]), "   a  bbb\n1234    x\n");
        let r = Report {
            mode: "req".into(),
            url: "nats://h:1".into(),
            server: "nats-server 2.15.1".into(),
            msgs: 10_000,
            size: 16,
            pubs: 1,
            subs: 1,
            secs: 0.5,
            msgs_per_sec: 20_000.0,
            mb_per_sec: 0.32,
            latency_us: Some(Latency { count: 10_000, p50: 41.26, p99: 88.0, p999: 150.0, max: 900.04, mean: 45.0 }),
            lost: 0,
            subscriptions: None,
            window: None,
            ack: None,
            batch: None,
        };
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "server nats://h:1 (nats-server 2.15.1)");
        assert!(lines[1].starts_with("mode  pubs  subs    msgs  size  time s  msgs/s  MB/s  lost  p50 µs"), "{text}");
        assert!(
            lines[2].ends_with("10,000    16    0.50  20,000   0.3     -    41.3    88.0     150.0   900.0"),
            "{text}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"mode":"req","url":"nats://h:1","server":"nats-server 2.15.1","msgs":10000"#));
        assert!(json.contains(r#""latency_us":{"count":10000,"p50":41.26,"#), "{json}");
        assert!(!json.contains("subscriptions"));
        assert!(!text.contains("LOST"));

        let f = Report { mode: "fanout".into(), msgs: 1000, subs: 8, lost: 2000, latency_us: None, ..r.clone() };
        let text = render(&f);
        assert!(text.lines().nth(2).unwrap().contains("  2,000       -"), "{text}");
        assert!(text.contains("LOST 2,000 of 8,000 deliveries (25.0%)"), "{text}");

        let s = Report {
            mode: "subs".into(),
            secs: 2.0,
            subscriptions: Some(SubsReport {
                count: 100_000,
                conns: 1,
                subs_per_sec: 50_000.0,
                rss_before_kib: Some(10_000),
                rss_after_kib: Some(30_000),
                bytes_per_sub: Some(204.8),
                routed: true,
            }),
            ..Report::default()
        };
        let text = render(&s);
        assert!(text.contains("bytes/sub"), "{text}");
        assert!(text.contains("10,000 KiB  30,000 KiB        205     yes"), "{text}");
        assert!(!text.contains("no --server-pid"));
    }
}

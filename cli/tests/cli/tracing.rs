//! `[tracing]` end to end: `kaelix serve` processes export their spans
//! over OTLP/HTTP to a collector this test runs on 127.0.0.1, which
//! decodes every POST as an `ExportTraceServiceRequest`
//! (opentelemetry-proto) and answers 200.
//!
//! * one node, ratio 1.0: a NATS publish yields `nats.publish` →
//!   `broker.publish` → `nats.deliver` (parent links, kinds, one trace id,
//!   `service.name` and `kaelix.node.id` on the resource), the delivered
//!   message carries the `traceparent` of `broker.publish`; a publish
//!   carrying a sampled `traceparent` continues the caller's trace under
//!   the caller's span; one carrying an unsampled `traceparent` makes no
//!   span and its header reaches the subscriber unchanged;
//! * three members, a replicated topic, a publish to a follower: the
//!   follower's `nats.publish` → `broker.publish` → `raft.commit`, and the
//!   deliveries on the leader and on the follower are children of that
//!   `broker.publish` in the same trace — the context crossed the forward
//!   and the Raft commit inside the record;
//! * one node, ratio 0.25, 2000 root publishes: the number of exported
//!   traces lies within 5 standard deviations of the binomial mean, and
//!   every exported trace is whole.
//!
//! The members are stopped with SIGTERM: `kaelix serve` flushes its spans
//! after the drain, so everything is in once they have exited.

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "real processes, sockets, clocks")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use super::cluster::{Layout, Member, leader_by_status, wait_for};

/// One exported span with the resource it came with.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    node: i64,
    name: String,
    kind: i32,
    trace: String,
    span: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_of(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text_of(&kv.value))).collect()
}

/// A minimal OTLP/HTTP collector: every POST /v1/traces decoded.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    posts: Arc<Mutex<usize>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(0));
        let (into, counted) = (spans.clone(), posts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let decoded = Collector::serve(stream);
                *counted.lock().unwrap() += 1;
                into.lock().unwrap().extend(decoded);
            }
        });
        Collector { addr, spans, posts }
    }

    /// Reads one request, checks its shape, decodes it and answers.
    fn serve(stream: TcpStream) -> Vec<Exported> {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        assert_eq!(request_line, "POST /v1/traces HTTP/1.1\r\n");
        let mut length = None;
        let mut content_type = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.trim().parse::<usize>().unwrap()),
                "content-type" => content_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        assert_eq!(content_type.as_deref(), Some("application/x-protobuf"), "OTLP/HTTP with protobuf bodies");
        let mut body = vec![0u8; length.expect("a Content-Length")];
        reader.read_exact(&mut body).unwrap();
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("a valid ExportTraceServiceRequest");
        let mut out = Vec::new();
        for rs in &request.resource_spans {
            let resource = attributes(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]));
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let node = resource.get("kaelix.node.id").and_then(|n| n.parse().ok()).unwrap_or(-1);
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Exported {
                        service: service.clone(),
                        node,
                        name: s.name.clone(),
                        kind: s.kind,
                        trace: hex(&s.trace_id),
                        span: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attributes: attributes(&s.attributes),
                    });
                }
            }
        }
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        out
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }
}

fn tracing_config(collector: &Collector, ratio: f64, extra: &str) -> String {
    format!(
        "{extra}[tracing]\nenabled = true\nservice_name = \"kaelix-test\"\nendpoint = \"{}\"\nsampling_ratio = {ratio:?}\n",
        collector.endpoint()
    )
}

/// A single `kaelix serve`, stopped with SIGTERM.
struct Single {
    child: Child,
    nats: SocketAddr,
}

impl Single {
    fn start(name: &str, config: &str) -> Single {
        let dir = std::env::temp_dir().join(format!("kaelix-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config: PathBuf = super::temp_file(&format!("{name}.toml"), config);
        let mut command = Command::new(env!("CARGO_BIN_EXE_kaelix"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KAELIX_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["serve", "--nats-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--no-metrics"])
            .args(["--log-level", "error", "--workers", "1", "--config", config.to_str().unwrap()])
            .args(["--data-dir", dir.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("kaelix serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let nats = loop {
            let line = lines.next().expect("kaelix serve prints its addresses").unwrap();
            if let Some(rest) = line.strip_prefix("kaelix serve: NATS clients on nats://") {
                break rest.parse().unwrap();
            }
        };
        // Keep reading stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Single { child, nats }
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = wait_for("kaelix serve to exit", Duration::from_secs(15), || self.child.try_wait().unwrap());
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw NATS client that negotiates headers (deliveries may be HMSG).
struct Client {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
}

/// A delivery: subject, its header block's lines, payload.
type Delivery = (String, Vec<String>, String);

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        let mut c = Client { conn, reader };
        c.conn.write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n").unwrap();
        c.sync();
        c
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert_ne!(self.reader.read_line(&mut line).unwrap(), 0, "connection closed");
        line.trim_end().to_owned()
    }

    /// PING, and read up to the PONG (the server has handled everything
    /// sent before; publishes to stored topics are stored).
    fn sync(&mut self) {
        self.conn.write_all(b"PING\r\n").unwrap();
        loop {
            let l = self.line();
            match l.as_str() {
                "PONG" => return,
                "PING" => self.conn.write_all(b"PONG\r\n").unwrap(),
                _ => assert!(!l.starts_with("-ERR"), "{l}"),
            }
        }
    }

    fn subscribe(&mut self, subject: &str) {
        write!(self.conn, "SUB {subject} 1\r\n").unwrap();
        self.sync();
    }

    fn publish(&mut self, subject: &str, payload: &str) {
        write!(self.conn, "PUB {subject} {}\r\n{payload}\r\n", payload.len()).unwrap();
    }

    fn publish_with_traceparent(&mut self, subject: &str, traceparent: &str, payload: &str) {
        let headers = format!("NATS/1.0\r\ntraceparent: {traceparent}\r\n\r\n");
        let total = headers.len() + payload.len();
        write!(self.conn, "HPUB {subject} {} {total}\r\n{headers}{payload}\r\n", headers.len()).unwrap();
    }

    /// The next MSG or HMSG.
    fn next(&mut self) -> Delivery {
        loop {
            let l = self.line();
            let parts: Vec<&str> = l.split(' ').collect();
            match parts[0] {
                "PING" => self.conn.write_all(b"PONG\r\n").unwrap(),
                "MSG" => {
                    let len: usize = parts.last().unwrap().parse().unwrap();
                    let mut payload = vec![0u8; len + 2];
                    self.reader.read_exact(&mut payload).unwrap();
                    payload.truncate(len);
                    return (parts[1].to_owned(), Vec::new(), String::from_utf8(payload).unwrap());
                }
                "HMSG" => {
                    let total: usize = parts[parts.len() - 1].parse().unwrap();
                    let header_len: usize = parts[parts.len() - 2].parse().unwrap();
                    let mut raw = vec![0u8; total + 2];
                    self.reader.read_exact(&mut raw).unwrap();
                    let headers = String::from_utf8(raw[..header_len].to_vec()).unwrap();
                    let payload = String::from_utf8(raw[header_len..total].to_vec()).unwrap();
                    let lines = headers.split("\r\n").skip(1).filter(|l| !l.is_empty()).map(str::to_owned).collect();
                    return (parts[1].to_owned(), lines, payload);
                }
                other => panic!("unexpected {other}: {l}"),
            }
        }
    }
}

fn traceparent_of(delivery: &Delivery) -> Option<String> {
    delivery.1.iter().find_map(|h| h.strip_prefix("traceparent: ").map(str::to_owned))
}

fn one<'a>(spans: &'a [Exported], what: &str, f: impl Fn(&Exported) -> bool) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} among {spans:#?}");
    found[0]
}

#[test]
fn one_node_exports_linked_spans_and_continues_a_callers_trace() {
    let collector = Collector::start();
    let server = Single::start("trace-one", &tracing_config(&collector, 1.0, ""));
    let mut sub = Client::connect(server.nats);
    sub.subscribe("orders");
    let mut publisher = Client::connect(server.nats);
    // A root publish, then one continuing a sampled caller, then one from
    // an unsampled caller.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    publisher.publish("orders", "root");
    publisher.publish_with_traceparent("orders", &format!("00-{caller_trace}-{caller_span}-01"), "continued");
    publisher.publish_with_traceparent("orders", unsampled, "unsampled");
    publisher.sync();
    let deliveries: Vec<Delivery> = (0..3).map(|_| sub.next()).collect();
    server.terminate();
    let spans = collector.spans();

    // The root publish.
    let request = one(&spans, "root nats.publish", |s| s.name == "nats.publish" && s.parent.is_empty());
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!((request.service.as_str(), request.node), ("kaelix-test", 1));
    assert_eq!(request.attributes.get("messaging.destination.name").map(String::as_str), Some("orders"));
    let trace = &request.trace;
    let broker = one(&spans, "its broker.publish", |s| s.name == "broker.publish" && s.parent == request.span);
    assert_eq!((broker.kind, &broker.trace), (SpanKind::Producer as i32, trace));
    let deliver = one(&spans, "its nats.deliver", |s| s.name == "nats.deliver" && s.trace == *trace);
    assert_eq!((deliver.kind, &deliver.parent), (SpanKind::Consumer as i32, &broker.span));
    assert_eq!(deliveries[0].2, "root");
    assert_eq!(
        traceparent_of(&deliveries[0]),
        Some(format!("00-{trace}-{}-01", broker.span)),
        "the delivered message carries the broker.publish span's context"
    );

    // The caller's trace, continued under the caller's span.
    let continued = one(&spans, "the continued nats.publish", |s| s.name == "nats.publish" && s.trace == caller_trace);
    assert_eq!(continued.parent, caller_span, "the caller's span is the parent");
    let broker = one(&spans, "its broker.publish", |s| s.name == "broker.publish" && s.parent == continued.span);
    one(&spans, "its delivery", |s| s.name == "nats.deliver" && s.parent == broker.span && s.trace == caller_trace);
    assert_eq!(
        traceparent_of(&deliveries[1]),
        Some(format!("00-{caller_trace}-{}-01", broker.span)),
        "the server's span replaces the caller's in the header, same trace"
    );

    // The unsampled caller: no span anywhere, its header untouched.
    assert!(!spans.iter().any(|s| s.trace == "0af7651916cd43dd8448eb211c80319c"), "{spans:#?}");
    assert_eq!(traceparent_of(&deliveries[2]).as_deref(), Some(unsampled));
    assert_eq!(spans.len(), 6, "two traces of three spans: {spans:#?}");
}

#[test]
fn the_sampling_ratio_holds_within_five_standard_deviations() {
    const N: usize = 2000;
    const RATIO: f64 = 0.25;
    let collector = Collector::start();
    let server = Single::start("trace-ratio", &tracing_config(&collector, RATIO, ""));
    let mut publisher = Client::connect(server.nats);
    for i in 0..N {
        publisher.publish("sampled.subject", &format!("m{i}"));
        if i % 200 == 199 {
            publisher.sync();
        }
    }
    publisher.sync();
    server.terminate();
    let spans = collector.spans();
    let roots: Vec<&Exported> = spans.iter().filter(|s| s.name == "nats.publish").collect();
    let traces: std::collections::BTreeSet<&str> = roots.iter().map(|s| s.trace.as_str()).collect();
    assert_eq!(traces.len(), roots.len(), "one trace per sampled publish");
    // Binomial(N, RATIO): mean 500, standard deviation sqrt(N p (1-p)) ≈ 19.4;
    // 5 sd either side is [403, 597] (a false alarm about once in 1.7 million runs).
    let mean = N as f64 * RATIO;
    let sd = (N as f64 * RATIO * (1.0 - RATIO)).sqrt();
    let (low, high) = ((mean - 5.0 * sd).ceil() as usize, (mean + 5.0 * sd).floor() as usize);
    assert!((low..=high).contains(&traces.len()), "{} of {N} publishes traced; expected {low}..={high}", traces.len());
    // Every exported trace is whole: its broker publish, nothing without a root.
    for root in &roots {
        one(&spans, "the broker.publish of a sampled root", |s| s.name == "broker.publish" && s.parent == root.span);
    }
    assert_eq!(spans.len(), 2 * roots.len(), "no span outside the sampled traces");
    assert!(*collector.posts.lock().unwrap() >= 1);
}

#[test]
fn a_publish_forwarded_to_the_leader_is_one_trace_across_members() {
    let collector = Collector::start();
    let layout = Layout::new(
        "trace-cluster",
        &tracing_config(&collector, 1.0, "[[topics]]\nname = \"orders\"\nstorage = \"replicated\"\n"),
    );
    let members: Vec<Member> = (1..=3).map(|id| layout.start(id)).collect();
    let leader = wait_for("a leader every member names", Duration::from_secs(15), || {
        leader_by_status(&members.iter().collect::<Vec<_>>())
    });
    let follower = (1..=3u64).find(|&n| n != leader).unwrap();
    let nats_of = |id: u64| members[id as usize - 1].nats;
    let mut on_leader = Client::connect(nats_of(leader));
    on_leader.subscribe("orders");
    let mut on_follower = Client::connect(nats_of(follower));
    on_follower.subscribe("orders");
    let mut publisher = Client::connect(nats_of(follower));
    publisher.publish("orders", "forwarded");
    publisher.sync();
    let at_leader = on_leader.next();
    let at_follower = on_follower.next();
    assert_eq!((at_leader.2.as_str(), at_follower.2.as_str()), ("forwarded", "forwarded"));
    for m in members {
        assert!(m.terminate().success());
    }
    let spans = collector.spans();

    let request = one(&spans, "the follower's nats.publish", |s| s.name == "nats.publish");
    assert_eq!((request.node, request.parent.as_str()), (follower as i64, ""), "a root on the follower");
    let trace = request.trace.clone();
    let broker = one(&spans, "its broker.publish", |s| s.name == "broker.publish" && s.parent == request.span);
    let commit = one(&spans, "its raft.commit", |s| s.name == "raft.commit");
    assert_eq!(
        (commit.node, &commit.trace, &commit.parent),
        (follower as i64, &trace, &broker.span),
        "the proposing member's commit span, under its broker publish"
    );
    assert!(commit.attributes.contains_key("messaging.message.offset"), "{commit:?}");
    let deliveries: Vec<&Exported> = spans.iter().filter(|s| s.name == "nats.deliver").collect();
    let mut nodes: Vec<i64> = deliveries.iter().map(|d| d.node).collect();
    nodes.sort();
    let mut expected = vec![leader as i64, follower as i64];
    expected.sort();
    assert_eq!(nodes, expected, "one delivery span on each subscriber's member: {deliveries:#?}");
    for d in &deliveries {
        assert_eq!((&d.trace, &d.parent), (&trace, &broker.span), "{d:?}");
    }
    assert_eq!(traceparent_of(&at_leader), Some(format!("00-{trace}-{}-01", broker.span)));
    let members_in_trace: std::collections::BTreeSet<i64> =
        spans.iter().filter(|s| s.trace == trace).map(|s| s.node).collect();
    assert!(members_in_trace.len() >= 2, "{members_in_trace:?}");
}

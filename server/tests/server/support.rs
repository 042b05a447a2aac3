//! A server on the real runtime in a fresh data directory, and helpers.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests use real time, files and sockets

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use kaelix_core::NodeId;
use kaelix_core::time::Duration;
use kaelix_runtime_real::topology::Topology;
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime};
use kaelix_server::config::TopicSpec;
use kaelix_server::{Server, ServerConfig};

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kaelix-server-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running server and the executor under it.
pub struct TestServer {
    pub exec: Executor,
    pub server: Option<Server<RealRuntime>>,
    pub addr: SocketAddr,
    /// The native-protocol listener.
    pub native_addr: SocketAddr,
    /// The server's runtime (clients of the tests run on it too).
    pub rt: RealRuntime,
}

/// The configuration tests start from: port 0, one durable topic `orders`.
pub fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.nats.listen = "127.0.0.1:0".parse().unwrap();
    config.native.listen = "127.0.0.1:0".parse().unwrap();
    config.topics.push(TopicSpec {
        name: "orders".into(),
        partitions: 1,
        storage: kaelix_server::config::StorageChoice::Durable,
        flush_interval_ms: None,
        max_bytes: None,
        max_records: None,
        max_age_secs: None,
    });
    config
}

impl TestServer {
    /// Starts a server with `config` in `dir` (created if missing).
    pub fn start_in(dir: PathBuf, config: ServerConfig) -> TestServer {
        let exec = Executor::new(ExecutorConfig {
            workers_per_node: Some(2),
            pin_workers: false,
            topology: Some(Topology::single_node(0..2)),
            name: "server-test".into(),
            ..ExecutorConfig::default()
        })
        .expect("executor starts");
        std::fs::create_dir_all(&dir).unwrap();
        let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(1), dir.clone())).expect("runtime");
        let server = exec.block_on(Server::start(rt.clone(), config)).expect("server starts");
        let (addr, native_addr) = (server.nats_addr(), server.native_addr());
        TestServer { exec, server: Some(server), addr, native_addr, rt }
    }

    /// Starts a server with the test configuration in a fresh directory.
    pub fn start(label: &str) -> TestServer {
        Self::start_in(temp_dir(label), config())
    }

    /// The server.
    pub fn server(&self) -> &Server<RealRuntime> {
        self.server.as_ref().expect("running")
    }

    /// `nats://addr`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drains and stops; keeps the directory.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            self.exec.block_on(async move { server.shutdown(Duration::from_secs(5)).await });
            self.exec.shutdown(Duration::from_secs(2));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A raw protocol connection for exact byte-level checks.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Raw {
    /// Connects and reads the INFO line.
    pub fn connect(addr: SocketAddr) -> (Raw, String) {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut raw = Raw { reader: BufReader::new(stream), writer };
        let info = raw.line();
        assert!(info.starts_with("INFO {"), "{info}");
        (raw, info)
    }

    /// Connects and completes `CONNECT` (non-verbose, headers on).
    pub fn connected(addr: SocketAddr) -> Raw {
        let (mut raw, _) = Raw::connect(addr);
        raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}\r\nPING\r\n");
        assert_eq!(raw.line(), "PONG");
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next line without its CRLF ("" at EOF, "<timeout>" on timeout).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(_) => line.trim_end_matches(['\r', '\n']).to_owned(),
            Err(_) => "<timeout>".to_owned(),
        }
    }

    /// Exactly `n` bytes plus the CRLF after them.
    pub fn payload(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n + 2];
        self.reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[n..], b"\r\n");
        buf.truncate(n);
        buf
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

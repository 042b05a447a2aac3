//! `kaelix top` in a real terminal: tmux runs it in a detached 120x40
//! session against a `kaelix serve` on free ports, a NATS client publishes,
//! and the test reads the screen with `tmux capture-pane` until the
//! published-messages figures have moved; `q` must end it and give the
//! terminal back. Without tmux the test fails saying to install it, unless
//! `CI_SKIP_TMUX=1`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a real terminal, sockets and clock")]

use std::io::{BufRead, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use super::serve;

/// A tmux server of this test alone (its own socket), killed when dropped.
struct Tmux {
    socket: String,
    /// Where the shell around the command writes its exit status. tmux's
    /// own `pane_dead_status` is not used: tmux marks the pane dead when the
    /// terminal closes and may never record the status (seen with 3.3a).
    status_file: std::path::PathBuf,
}

impl Tmux {
    /// None when tmux is missing and `CI_SKIP_TMUX=1`; panics saying to
    /// install it otherwise.
    fn start(name: &str, command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            if std::env::var("CI_SKIP_TMUX").as_deref() == Ok("1") {
                eprintln!("tmux missing and CI_SKIP_TMUX=1: kaelix top's terminal test skipped");
                return None;
            }
            panic!("kaelix top's terminal test needs tmux: install it (apt-get install tmux) or set CI_SKIP_TMUX=1");
        }
        let socket = format!("kaelix-top-{}-{name}", std::process::id());
        let status_file = std::env::temp_dir().join(format!("{socket}.status"));
        let _ = std::fs::remove_file(&status_file);
        let tmux = Tmux { socket, status_file };
        // remain-on-exit keeps the pane after top ends, so the test can read
        // the screen it left behind.
        let wrapped = format!("{command}; echo $? > {}", tmux.status_file.display());
        tmux.run(&["new-session", "-d", "-s", "top", "-x", "120", "-y", "40", &wrapped]);
        tmux.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The command's exit status once it has ended.
    fn exit_status(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        text.ends_with('\n').then(|| text.trim().to_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Captures until `check` accepts the screen (10 s at most).
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if let Some(found) = check(&screen) {
                return found;
            }
            assert!(Instant::now() < deadline, "no {what} on the screen in 10 s:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
        let _ = std::fs::remove_file(&self.status_file);
    }
}

/// The (rate, total) of the "published messages" row.
fn published(screen: &str) -> Option<(f64, u64)> {
    let row = screen.lines().find(|l| l.trim_start().starts_with("published messages"))?;
    let cells: Vec<&str> = row.split_whitespace().collect();
    let total = cells.last()?.parse().ok()?;
    let rate = cells.get(cells.len().checked_sub(2)?)?.trim_end_matches('*').parse().unwrap_or(0.0);
    Some((rate, total))
}

fn top_command(metrics: &str) -> String {
    format!("{} top --metrics {metrics} --interval 200", env!("CARGO_BIN_EXE_kaelix"))
}

/// Publishes `n` messages to `orders` and waits for the PONG that says
/// they are stored.
fn publish(conn: &mut std::net::TcpStream, reader: &mut impl BufRead, n: usize) {
    let mut batch = String::new();
    for _ in 0..n {
        batch.push_str("PUB orders 5\r\nhello\r\n");
    }
    batch.push_str("PING\r\n");
    conn.write_all(batch.as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\r\n");
}

#[test]
fn top_shows_the_publish_figures_move_and_quits_on_q() {
    let served = serve("top", "[[topics]]\nname = \"orders\"\nstorage = \"memory\"\n");
    let Some(tmux) = Tmux::start("live", &top_command(&served.metrics.to_string())) else { return };
    let first = tmux.wait_for("published messages row", published);
    assert_eq!(first.1, 0, "nothing published yet");

    let mut conn = std::net::TcpStream::connect(served.nats).unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    conn.write_all(b"CONNECT {\"verbose\":false}\r\n").unwrap();
    publish(&mut conn, &mut reader, 5);
    tmux.wait_for("total of 5", |s| published(s).filter(|p| p.1 == 5));

    // Publishing steadily: the rate column is above zero while it goes on.
    let mut sent: u64 = 5;
    let deadline = Instant::now() + Duration::from_secs(10);
    let moving = loop {
        publish(&mut conn, &mut reader, 10);
        sent += 10;
        let screen = tmux.screen();
        if let Some((rate, total)) = published(&screen)
            && rate > 0.0
            && total > 5
        {
            break (rate, total, screen);
        }
        assert!(Instant::now() < deadline, "no rising publish rate in 10 s:\n{screen}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(moving.1 <= sent, "{moving:?}");
    assert!(moving.2.contains("connections open"), "{}", moving.2);
    assert!(moving.2.contains("PARTITIONS"), "{}", moving.2);
    // Quiet again: the total settles at what was sent and the rate at zero.
    tmux.wait_for("settled figures", |s| published(s).filter(|p| p.1 == sent && p.0 == 0.0));

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let status = tmux.wait_for("top's exit", |_| tmux.exit_status());
    assert_eq!(status, "0", "kaelix top exited with {status}");
    // The alternate screen was left: the view is gone from the pane.
    let after = tmux.screen();
    assert!(!after.contains("published messages"), "{after}");
}

#[test]
fn top_says_when_it_cannot_reach_the_server_and_keeps_trying() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let Some(tmux) = Tmux::start("unreachable", &top_command(&addr.to_string())) else { return };
    let line = format!("cannot reach http://{addr}/metrics");
    tmux.wait_for("cannot reach line", |s| s.contains(&line).then_some(()));
    // Still running a second later (it retries rather than exits).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(tmux.exit_status(), None, "kaelix top ended:\n{}", tmux.screen());
    assert!(tmux.screen().contains(&line));
    tmux.run(&["send-keys", "-t", "top", "C-c"]);
    let status = tmux.wait_for("top's exit on Ctrl-C", |_| tmux.exit_status());
    assert_eq!(status, "0", "kaelix top exited with {status} on Ctrl-C");
}

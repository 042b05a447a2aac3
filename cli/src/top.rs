//! `kaelix top`: a live terminal view of a running `kaelix serve`, read
//! from its Prometheus endpoint (`--metrics`, default 127.0.0.1:9464).
//!
//! Every `--interval` ms it GETs `/metrics`, parses the page and redraws
//! the screen that [`stats::screen`] lays out: rates from the counters'
//! movement since the previous scrape, gauges, latency quantiles,
//! consumer-group lag and, on a cluster member, partitions and their
//! leaders. A server it cannot reach gets a `cannot reach …` line and is
//! tried again at the next interval; `q`, Esc or Ctrl-C quits and gives
//! the terminal back as it was (also on a panic).
//!
//! Terminal: crossterm alone (raw mode, alternate screen, key events). The
//! view is whole text lines redrawn each interval, which needs no layout
//! engine or widgets, so ratatui would add build time and no capability.
//!
//! HTTP: one plain `std::net::TcpStream` GET per scrape rather than a
//! client crate. The request is HTTP/1.0, so the server answers with the
//! body unchunked and closes the connection: the reply is read to its
//! end, the status line checked and the head split off, which is all of
//! HTTP a local, plain-text metrics endpoint needs (no TLS, redirects or
//! keep-alive). A chunked reply (which an HTTP/1.0 request forbids) is
//! refused with a message rather than misread.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge: a socket, the OS clock, the terminal

mod stats;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use stats::Snapshot;

/// `kaelix top` options.
#[derive(clap::Args)]
pub struct TopArgs {
    /// The server's metrics endpoint: HOST:PORT or http://HOST[:PORT][/PATH]
    /// (path default /metrics; `telemetry.metrics_listen` of the server).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics: String,
    /// Milliseconds between two scrapes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub interval: u64,
}

/// Where to scrape.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    /// HOST:PORT as given (the Host header and what `connect` resolves).
    authority: String,
    path: String,
}

impl Endpoint {
    fn parse(given: &str) -> Result<Endpoint, String> {
        let rest = if let Some(rest) = given.strip_prefix("http://") {
            rest
        } else if given.contains("://") {
            return Err(format!("--metrics {given:?}: only http:// endpoints (no TLS)"));
        } else {
            given
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty() {
            return Err(format!("--metrics {given:?}: no host"));
        }
        // A port is required unless it is a URL (port 80 then).
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
        let authority = if has_port {
            authority.to_owned()
        } else if given.starts_with("http://") {
            format!("{authority}:80")
        } else {
            return Err(format!("--metrics {given:?}: give HOST:PORT or an http:// URL"));
        };
        Ok(Endpoint { authority, path: path.to_owned() })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// The body of an HTTP/1.0 reply, or why there is none.
fn reply_body(reply: &[u8]) -> Result<String, String> {
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of the HTTP header in the reply")?;
    let head = String::from_utf8_lossy(&reply[..split]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..))
        .and_then(|s| s.split(' ').next())
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP reply: {status:?}"))?;
    if code != 200 {
        return Err(format!("HTTP {}", status.get(9..).unwrap_or(status)));
    }
    for header in lines {
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("transfer-encoding")
            && !value.trim().eq_ignore_ascii_case("identity")
        {
            return Err(format!("unsupported Transfer-Encoding {} in a reply to HTTP/1.0", value.trim()));
        }
    }
    String::from_utf8(reply[split + 4..].to_vec()).map_err(|_| "the page is not UTF-8".to_owned())
}

/// The largest page read (a scrape of a big server is a few hundred KiB).
const MAX_PAGE: u64 = 64 << 20;

/// One GET of the endpoint.
fn scrape(endpoint: &Endpoint, timeout: Duration) -> Result<String, String> {
    let addrs: Vec<_> = endpoint.authority.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    let mut last = "no address".to_owned();
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\nUser-Agent: kaelix-top\r\n\r\n",
        endpoint.path, endpoint.authority
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.take(MAX_PAGE).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    reply_body(&reply)
}

/// Puts the terminal back as it was when dropped (also on a panic).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(screen)
    }

    /// Draws `lines` from the top, cut to the terminal's size.
    fn draw(&self, lines: &[String]) -> std::io::Result<()> {
        let (width, height) = terminal::size().unwrap_or((80, 24));
        let mut out = std::io::stdout().lock();
        for (row, line) in lines.iter().take(usize::from(height)).enumerate() {
            let cut: String = line.chars().take(usize::from(width)).collect();
            queue!(
                out,
                cursor::MoveTo(0, row as u16),
                style::Print(cut),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        let below = lines.len().min(usize::from(height)) as u16;
        queue!(out, cursor::MoveTo(0, below), terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// Whether `event` asks to quit.
fn quits(event: &Event) -> bool {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => {
            matches!(key.code, KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

/// `kaelix top`.
pub fn run(args: TopArgs) -> ExitCode {
    let endpoint = match Endpoint::parse(&args.metrics) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kaelix top: {e}");
            return ExitCode::from(2);
        }
    };
    let screen = match Screen::enter() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kaelix top: needs a terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    match watch(&screen, &endpoint, Duration::from_millis(args.interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            drop(screen);
            eprintln!("kaelix top: the terminal failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Scrapes and redraws until a quit key.
fn watch(screen: &Screen, endpoint: &Endpoint, interval: Duration) -> std::io::Result<()> {
    let url = endpoint.url();
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut previous: Option<(Snapshot, Instant)> = None;
    let mut body: Vec<String> = Vec::new();
    let mut scrapes = 0u64;
    loop {
        let started = Instant::now();
        let status = match scrape(endpoint, timeout).and_then(|page| Snapshot::parse(&page)) {
            Ok(snapshot) => {
                scrapes += 1;
                let prev = previous.as_ref().map(|(s, at)| (s, started.duration_since(*at).as_secs_f64()));
                body = stats::screen(&snapshot, prev);
                let status = match prev {
                    Some((_, seconds)) => format!("scrape {scrapes} ok; rates over the last {seconds:.2} s"),
                    None => format!("scrape {scrapes} ok"),
                };
                previous = Some((snapshot, started));
                status
            }
            Err(reason) => {
                if !body.is_empty() && !body[0].starts_with("(last figures") {
                    body.insert(0, "(last figures before the error)".to_owned());
                }
                format!("cannot reach {url}: {reason} (trying again every {} ms)", interval.as_millis())
            }
        };
        let mut lines =
            vec![format!("kaelix top  {url}  every {} ms  (q quits)", interval.as_millis()), status, String::new()];
        lines.extend(body.iter().cloned());
        screen.draw(&lines)?;
        // Keys until the next scrape; a resize redraws at once.
        let next = started + interval;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left)? {
                break;
            }
            let event = event::read()?;
            if quits(&event) {
                return Ok(());
            }
            if let Event::Resize(..) = event {
                screen.draw(&lines)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_addresses_or_http_urls() {
        let e = Endpoint::parse("127.0.0.1:9464").unwrap();
        assert_eq!(e, Endpoint { authority: "127.0.0.1:9464".into(), path: "/metrics".into() });
        assert_eq!(e.url(), "http://127.0.0.1:9464/metrics");
        let e = Endpoint::parse("http://node-1:9000/custom/metrics").unwrap();
        assert_eq!(e, Endpoint { authority: "node-1:9000".into(), path: "/custom/metrics".into() });
        assert_eq!(Endpoint::parse("http://node-1").unwrap().authority, "node-1:80");
        assert_eq!(Endpoint::parse("[::1]:9464").unwrap().authority, "[::1]:9464");
        assert!(Endpoint::parse("https://node-1:9464").unwrap_err().contains("no TLS"));
        assert!(Endpoint::parse("node-1").unwrap_err().contains("HOST:PORT"));
        assert!(Endpoint::parse("http:///metrics").unwrap_err().contains("no host"));
    }

    #[test]
    fn replies_are_checked_before_their_body_is_read() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nup 1\n";
        assert_eq!(reply_body(ok).unwrap(), "up 1\n");
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\nno";
        assert_eq!(reply_body(missing).unwrap_err(), "HTTP 404 Not Found");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nup 1\n\r\n0\r\n\r\n";
        assert!(reply_body(chunked).unwrap_err().contains("chunked"));
        assert!(reply_body(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("no end of the HTTP header"));
        assert!(reply_body(b"garbage\r\n\r\n").unwrap_err().contains("not an HTTP reply"));
    }

    #[test]
    fn a_closed_port_is_an_error_not_a_panic() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let endpoint = Endpoint::parse(&addr.to_string()).unwrap();
        assert!(scrape(&endpoint, Duration::from_secs(1)).is_err());
    }
}

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
//! HTTP: one plain HTTP/1.0 GET per scrape ([`crate::http_get`], shared
//! with `kaelix cluster status`).

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge: a socket, the OS clock, the terminal

mod stats;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use stats::Snapshot;

use crate::http_get::{self, Endpoint};

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

/// Where to scrape: `--metrics` as an endpoint, or what is wrong with it.
fn endpoint(given: &str) -> Result<Endpoint, String> {
    Endpoint::parse(given).map_err(|why| format!("--metrics {given:?}: {why}"))
}

/// One GET of the endpoint.
fn scrape(endpoint: &Endpoint, timeout: Duration) -> Result<String, String> {
    http_get::get(endpoint, timeout, "kaelix-top")
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
    let endpoint = match endpoint(&args.metrics) {
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
    fn a_bad_endpoint_names_the_flag() {
        assert_eq!(endpoint("127.0.0.1:9464").unwrap().url(), "http://127.0.0.1:9464/metrics");
        assert_eq!(
            endpoint("https://node-1:9464").unwrap_err(),
            "--metrics \"https://node-1:9464\": only http:// endpoints (no TLS)"
        );
        assert_eq!(endpoint("node-1").unwrap_err(), "--metrics \"node-1\": give HOST:PORT or an http:// URL");
        assert_eq!(endpoint("http:///metrics").unwrap_err(), "--metrics \"http:///metrics\": no host");
    }
}

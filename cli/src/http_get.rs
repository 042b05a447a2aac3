//! One plain HTTP GET of a server's metrics page: what `kaelix top` and
//! `kaelix cluster status` both do to read a `/metrics` endpoint.
//!
//! A `std::net::TcpStream` per GET rather than a client crate. The request
//! is HTTP/1.0, so the server answers with the body unchunked and closes
//! the connection: the reply is read to its end (at most [`MAX_PAGE`]),
//! the status line checked and the head split off, which is all of HTTP a
//! local, plain-text metrics endpoint needs (no TLS, redirects or
//! keep-alive). A chunked reply (which an HTTP/1.0 request forbids) is
//! refused with a message rather than misread.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge: a socket with timeouts

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where to GET.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// HOST:PORT as given (the Host header and what `connect` resolves).
    pub authority: String,
    /// The request path (`/metrics` unless a URL names another).
    pub path: String,
}

impl Endpoint {
    /// `HOST:PORT` (path `/metrics`) or `http://HOST[:PORT][/PATH]` (port
    /// 80 by default); the error says what is wrong with `given` without
    /// repeating it (the caller names the flag).
    pub fn parse(given: &str) -> Result<Endpoint, String> {
        let rest = if let Some(rest) = given.strip_prefix("http://") {
            rest
        } else if given.contains("://") {
            return Err("only http:// endpoints (no TLS)".to_owned());
        } else {
            given
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty() {
            return Err("no host".to_owned());
        }
        // A port is required unless it is a URL (port 80 then).
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
        let authority = if has_port {
            authority.to_owned()
        } else if given.starts_with("http://") {
            format!("{authority}:80")
        } else {
            return Err("give HOST:PORT or an http:// URL".to_owned());
        };
        Ok(Endpoint { authority, path: path.to_owned() })
    }

    /// The endpoint as an `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// The largest page read (a scrape of a big server is a few hundred KiB).
pub const MAX_PAGE: u64 = 64 << 20;

/// One GET of `endpoint`: the page, or why there is none. `timeout`
/// bounds the connect and each read and write; `agent` is the
/// `User-Agent` (which command asked, for the server's logs).
pub fn get(endpoint: &Endpoint, timeout: Duration, agent: &str) -> Result<String, String> {
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
        "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\nUser-Agent: {agent}\r\n\r\n",
        endpoint.path, endpoint.authority
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.take(MAX_PAGE).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    reply_body(&reply)
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
        assert!(get(&endpoint, Duration::from_secs(1), "test").is_err());
    }

    #[test]
    fn a_get_sends_the_request_and_returns_the_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                request.push(byte[0]);
            }
            conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nup 1\n").unwrap();
            String::from_utf8(request).unwrap()
        });
        let endpoint = Endpoint::parse(&format!("http://{addr}/custom")).unwrap();
        assert_eq!(get(&endpoint, Duration::from_secs(5), "kaelix-test").unwrap(), "up 1\n");
        let request = server.join().unwrap();
        assert!(request.starts_with(&format!("GET /custom HTTP/1.0\r\nHost: {addr}\r\n")), "{request:?}");
        assert!(request.contains("\r\nUser-Agent: kaelix-test\r\n"), "{request:?}");
    }
}

//! The fault proxy of the network-namespace test: the faults this kernel
//! cannot make (no `netem`) — delay, reordering, duplication, a held
//! connection — made in user space between the members.
//!
//! Every member's address in `--peers` is the proxy's (`10.77.0.20i`, in
//! the proxy's namespace), so every connection one member opens to another
//! passes through it: `10.77.0.20i:7000` → `10.77.0.i:7000` (the peer
//! transport: Raft and SWIM datagrams) and `:7001` → `:7001` (forwarded
//! publishes, a client stream).
//!
//! Reordering or duplicating *bytes* of a TCP stream is not a fault any
//! network can show an application (TCP orders and deduplicates them); it
//! would only test the frame decoder. What the members' protocols are
//! promised is the transport's **datagram** semantics — each frame of a peer
//! connection (12-byte hello, then a 4-byte little-endian length and a
//! channel byte + datagram) is one message that may be lost, delayed,
//! reordered or duplicated, as the simulator's network does. So on peer
//! connections the proxy works on whole frames:
//!
//! * [`Mode::Delay`]: each frame held 20–250 ms, order kept;
//! * [`Mode::Reorder`]: each frame held 0–200 ms independently, so later
//!   frames overtake earlier ones;
//! * [`Mode::Duplicate`]: each frame passed on, and 30 % of them a second
//!   time 0–100 ms later;
//! * [`Mode::Hold`]: nothing passed on while it lasts (the connection stays
//!   open, what arrives is kept and released, in order, when it ends).
//!
//! The forwarding connections carry a request/response client stream, which
//! an ordered reliable stream must deliver intact: there, and on the way
//! back of every connection (member → dialler), the proxy passes bytes in
//! order, delayed in `Delay` and held in `Hold` only.
//!
//! Threads, not the runtime: the proxy is test machinery outside the
//! system under test; a thread that moved into the proxy's namespace
//! (`setns`) binds the listeners, and every thread it starts inherits the
//! namespace, so upstream connections leave from there too.

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a real proxy: threads, sockets, clocks")]

use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaelix_core::rng::{DetRng, RngExt};

/// What the proxy does to what passes through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Mode {
    /// Everything passes at once.
    Pass = 0,
    /// Frames held 20–250 ms, order kept.
    Delay = 1,
    /// Frames held 0–200 ms each, independently.
    Reorder = 2,
    /// 30 % of frames passed twice.
    Duplicate = 3,
    /// Nothing passes.
    Hold = 4,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        [Mode::Pass, Mode::Delay, Mode::Reorder, Mode::Duplicate, Mode::Hold][usize::from(v)]
    }
}

/// What the proxy did, counted by itself (a description of the run, not a
/// check: nothing is asserted on it but that the faults happened).
#[derive(Default)]
pub(super) struct Counts {
    pub(super) connections: AtomicU64,
    pub(super) frames: AtomicU64,
    pub(super) delayed: AtomicU64,
    /// Frames released before a frame that arrived earlier.
    pub(super) overtaking: AtomicU64,
    pub(super) duplicated: AtomicU64,
}

/// A route: where the proxy listens, where it connects, the member it
/// leads to, and whether the stream is the peer transport (frames) or a
/// client stream (bytes).
pub(super) struct Route {
    pub(super) member: u64,
    pub(super) listen: SocketAddr,
    pub(super) upstream: SocketAddr,
    pub(super) frames: bool,
}

/// Most member ids a route may name (modes are kept per member).
const MAX_MEMBER: usize = 8;

struct State {
    /// Per member: the mode of the connections to it (both directions).
    modes: [AtomicU8; MAX_MEMBER + 1],
    stop: AtomicBool,
    counts: Counts,
    /// Every socket of the proxy, shut down when it stops.
    sockets: Mutex<Vec<TcpStream>>,
    seed: AtomicU64,
}

impl State {
    fn mode(&self, member: u64) -> Mode {
        Mode::from_u8(self.modes[member as usize].load(Ordering::Relaxed))
    }

    fn rng(&self) -> DetRng {
        kaelix_core::rng::seeded(self.seed.fetch_add(1, Ordering::Relaxed))
    }
}

/// The running proxy; stopped (every socket shut down) when dropped.
pub(super) struct Proxy {
    state: Arc<State>,
}

impl Proxy {
    /// Starts `routes` in the network namespace `ns` (`/run/netns/NS`);
    /// frame delays are drawn from generators seeded from `seed`.
    pub(super) fn start(ns: &str, routes: Vec<Route>, seed: u64) -> Proxy {
        let state = Arc::new(State {
            modes: std::array::from_fn(|_| AtomicU8::new(Mode::Pass as u8)),
            stop: AtomicBool::new(false),
            counts: Counts::default(),
            sockets: Mutex::new(Vec::new()),
            seed: AtomicU64::new(seed),
        });
        let ns_path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = mpsc::channel();
        let st = state.clone();
        std::thread::Builder::new()
            .name("netns-proxy".into())
            .spawn(move || {
                let ns = std::fs::File::open(&ns_path).unwrap_or_else(|e| panic!("{ns_path}: {e}"));
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .expect("setns into the proxy's namespace");
                for route in routes {
                    assert!((1..=MAX_MEMBER as u64).contains(&route.member), "member ids 1 to {MAX_MEMBER}");
                    let listener = TcpListener::bind(route.listen)
                        .unwrap_or_else(|e| panic!("proxy listener {}: {e}", route.listen));
                    listener.set_nonblocking(true).unwrap();
                    let st = st.clone();
                    std::thread::spawn(move || accept_loop(&listener, &route, &st));
                }
                ready_tx.send(()).unwrap();
            })
            .unwrap();
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the proxy listens");
        Proxy { state }
    }

    /// Sets the mode of the connections to `member`, or to every member.
    pub(super) fn set_mode(&self, member: Option<u64>, mode: Mode) {
        for (id, m) in self.state.modes.iter().enumerate() {
            if member.is_none_or(|member| member as usize == id) {
                m.store(mode as u8, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn counts(&self) -> &Counts {
        &self.state.counts
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.set_mode(None, Mode::Pass);
        for s in self.state.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, route: &Route, state: &Arc<State>) {
    while !state.stop.load(Ordering::Relaxed) {
        let (down, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        down.set_nonblocking(false).unwrap();
        // A member that is down, frozen or cut off: the dialler sees its
        // connection closed, as it would without the proxy (a refused or
        // timed-out connect).
        let Ok(up) = TcpStream::connect_timeout(&route.upstream, Duration::from_secs(1)) else { continue };
        let _ = (down.set_nodelay(true), up.set_nodelay(true));
        state.counts.connections.fetch_add(1, Ordering::Relaxed);
        {
            let mut sockets = state.sockets.lock().unwrap();
            sockets.push(down.try_clone().unwrap());
            sockets.push(up.try_clone().unwrap());
        }
        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let (st1, st2, frames, member) = (state.clone(), state.clone(), route.frames, route.member);
        std::thread::spawn(move || pump(down, up, frames, member, &st1));
        std::thread::spawn(move || pump(u2, d2, false, member, &st2));
    }
}

/// One item waiting in a pump: released at `at`, `seq` breaks ties in
/// arrival order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: std::cmp::Reverse<(Instant, u64)>,
    bytes: Vec<u8>,
}

/// Copies `from` to `to`: a reader (this thread) cuts the stream into items
/// — the hello and whole frames when `frames`, else whatever one read
/// returns — and stamps each with its release time by the mode; a writer
/// thread releases them in release-time order. A broken side closes both.
fn pump(mut from: TcpStream, to: TcpStream, frames: bool, member: u64, state: &Arc<State>) {
    let (tx, rx) = mpsc::channel::<Pending>();
    let writer_state = state.clone();
    let writer = std::thread::spawn(move || release(to, &rx, member, &writer_state));
    let mut rng = state.rng();
    let mut seq = 0u64;
    // The latest release time handed out so far: order-keeping modes never
    // release before it.
    let mut last = Instant::now();
    let mut first = true;
    loop {
        let item = if frames { read_frame(&mut from, first) } else { read_chunk(&mut from) };
        first = false;
        let Some(bytes) = item else { break };
        let now = Instant::now();
        let mode = state.mode(member);
        let ms = |rng: &mut DetRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
        let mut send = |at: Instant, bytes: Vec<u8>| {
            seq += 1;
            tx.send(Pending { at: std::cmp::Reverse((at, seq)), bytes }).is_ok()
        };
        if frames {
            state.counts.frames.fetch_add(1, Ordering::Relaxed);
        }
        let at = match mode {
            Mode::Delay => {
                state.counts.delayed.fetch_add(1, Ordering::Relaxed);
                last.max(now + ms(&mut rng, 20, 250))
            }
            Mode::Reorder if frames => {
                let at = now + ms(&mut rng, 0, 200);
                if at < last {
                    state.counts.overtaking.fetch_add(1, Ordering::Relaxed);
                }
                at
            }
            Mode::Duplicate if frames && rng.random_bool(0.3) => {
                state.counts.duplicated.fetch_add(1, Ordering::Relaxed);
                let again = now + ms(&mut rng, 0, 100);
                if !send(again, bytes.clone()) {
                    break;
                }
                last.max(now)
            }
            _ => last.max(now),
        };
        last = last.max(at);
        if !send(at, bytes) {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
}

/// The writer half of [`pump`]: releases items when due (none while the
/// proxy holds), in release-time order; ends when the reader is gone and
/// everything is out, or when `to` breaks.
fn release(mut to: TcpStream, rx: &mpsc::Receiver<Pending>, member: u64, state: &State) {
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut reader_gone = false;
    loop {
        let now = Instant::now();
        if state.mode(member) != Mode::Hold || state.stop.load(Ordering::Relaxed) {
            while heap.peek().is_some_and(|p| p.at.0.0 <= now) {
                let p = heap.pop().unwrap();
                if to.write_all(&p.bytes).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        if reader_gone && heap.is_empty() {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        let wait = heap.peek().map_or(Duration::from_millis(20), |p| {
            p.at.0
                .0
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(20))
        });
        if reader_gone {
            std::thread::sleep(wait);
            continue;
        }
        match rx.recv_timeout(wait) {
            Ok(p) => heap.push(p),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => reader_gone = true,
        }
        while let Ok(p) = rx.try_recv() {
            heap.push(p);
        }
    }
}

fn read_chunk(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    match from.read(&mut buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
    }
}

/// The hello (12 bytes) first, then one whole frame (header and body) per call.
fn read_frame(from: &mut TcpStream, hello: bool) -> Option<Vec<u8>> {
    if hello {
        let mut buf = vec![0u8; 12];
        return from.read_exact(&mut buf).ok().map(|()| buf);
    }
    let mut header = [0u8; 4];
    from.read_exact(&mut header).ok()?;
    let len = u32::from_le_bytes(header) as usize;
    // The transport's own limit is far below; a larger length is not a
    // frame of this protocol, and the stream is passed on closed.
    if len > 64 << 20 {
        return None;
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&header);
    frame.resize(4 + len, 0);
    from.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

//! Transcript (data-driven) tests of the SWIM state machine: each file in
//! `tests/swim_transcripts/` scripts the inputs of one node and records,
//! below each step, every output it produced (file format, replay and
//! `KAELIX_BLESS=1`: see [`crate::transcript`]). A transcript must show
//! correct SWIM behaviour, not just any.
//!
//! Commands (`T` is a time such as `1200ms` or `5s`, `nX` a node; `time`,
//! `timeout`, `tick`, `run-until` and `deadline` are the runner's, and a
//! tick that output nothing prints nothing):
//!
//! * `config key=value…` before `start`: any `SwimConfig` field by name;
//! * `start nX [inc=N] [seed=N] [meta=M]`: the node under test, at the
//!   current time (0 unless `time` moved it);
//! * `recv nX <packet>`: a datagram from `nX`, in the text form of
//!   `kaelix_cluster::swim::text` (`ping seq=3 | alive n2 inc=1`);
//!   `recv-raw nX <hex>`: raw bytes (the runner prints why they do not
//!   decode, if they do not);
//! * `join nX…`, `leave`, `set-metadata M`;
//! * `members` (with each suspect's deadline and confirmations), `health`,
//!   `stats`, `phi nX` (its phi now, and the failed rounds the phi gate
//!   deferred so far): print state.
//!
//! Outputs print as `send nX <packet>`, `event <kind> nX inc=N [meta=M]`,
//! `rtt nX T`.

use bytes::Bytes;
use kaelix_cluster::swim::text::{Meta, parse_metadata, parse_node, parse_packet};
use kaelix_cluster::swim::{Output, Swim, SwimConfig};
use kaelix_core::rng::seeded;
use kaelix_core::time::{Duration, Instant};

use crate::transcript::{Harness, fmt_time, hex, kv, parse_duration, transcripts};

struct Env {
    config: SwimConfig,
    swim: Option<Swim>,
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
}

impl Harness for Env {
    const DIR: &'static str = "swim_transcripts";
    const QUIET_TICKS: bool = true;

    /// The configuration a transcript starts from: the defaults without the
    /// gossip timer and without the phi gate, so each transcript shows the
    /// rule it is about without interleaved gossip rounds or deferred
    /// probe rounds; `config gossip_interval=…` turns the timer on
    /// (`gossip-timer.txt`), `config phi_gate_max_deferrals=…` the gate
    /// (`phi-gate-*.txt`).
    fn new() -> Self {
        Env {
            config: SwimConfig { gossip_interval: Duration::ZERO, ..SwimConfig::default() }.without_phi_gate(),
            swim: None,
        }
    }

    fn started(&self) -> bool {
        self.swim.is_some()
    }

    fn configure(&mut self, key: &str, value: &str) -> Result<(), String> {
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
            "gossip_interval" => c.gossip_interval = parse_duration(value)?,
            "gossip_nodes" => c.gossip_nodes = num()? as usize,
            "lifeguard" => c.lifeguard = value.parse().map_err(|_| format!("bad bool {value:?} for {key}"))?,
            "max_packet_bytes" => c.max_packet_bytes = num()? as usize,
            "max_sync_bytes" => c.max_sync_bytes = num()? as usize,
            "phi_gate_max_deferrals" => c.phi_gate_max_deferrals = num()? as u32,
            "phi_threshold" => {
                c.phi.threshold = value.parse().map_err(|_| format!("bad number {value:?} for {key}"))?;
            }
            _ => return Err(format!("unknown config key {key:?}")),
        }
        Ok(())
    }

    fn deadline(&mut self) -> Result<Option<Instant>, String> {
        Ok(self.swim()?.poll_timeout())
    }

    fn timeout(&mut self, now: Instant) -> Result<Vec<String>, String> {
        self.swim()?.handle_timeout(now);
        let mut out = Vec::new();
        self.drain(&mut out);
        Ok(out)
    }

    fn exec(&mut self, now: &mut Instant, verb: &str, rest: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let now = *now;
        let mut out = Vec::new();
        match verb {
            "start" => {
                let me = parse_node(words.first().ok_or("start needs a node")?)?;
                let inc = kv(&words, "inc").map_or(Ok(1), |v| v.parse().map_err(|_| format!("bad inc {v}")))?;
                let seed = kv(&words, "seed").map_or(Ok(1), |v| v.parse().map_err(|_| format!("bad seed {v}")))?;
                let meta = kv(&words, "meta").map_or(Ok(Bytes::new()), parse_metadata)?;
                self.swim = Some(Swim::new(me, self.config.clone(), seeded(seed), now, inc, meta));
                self.drain(&mut out);
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
            "phi" => {
                let member = parse_node(words.first().ok_or("phi nX")?)?;
                let s = self.swim()?;
                out.push(format!(
                    "phi {member}={:.2} deferred-so-far={}",
                    s.phi(member, now),
                    s.stats().suspicions_deferred
                ));
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
                    "refutations={} reasserted={} announces={} push-pulls={} collected={}",
                    s.refutations, s.reasserted, s.announces, s.push_pulls, s.tombstones_collected
                ));
            }
            _ => return Err(format!("unknown command {verb:?}")),
        }
        Ok(out)
    }
}

transcripts! {
    swim, super::Env;
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
    gossip_timer => "gossip-timer.txt",
    stale_accusation => "stale-accusation.txt",
    phi_gate => "phi-gate.txt",
}

#[test]
fn metadata_prints_bare() {
    assert_eq!(Meta(b"x").to_string(), "x");
}

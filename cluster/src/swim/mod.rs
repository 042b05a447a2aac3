//! SWIM membership with Lifeguard: which nodes are in the cluster, and which
//! of them are alive.
//!
//! [`Swim`] is a sans-IO state machine (see `kaelix_core::sansio`): it owns
//! no socket, timer, clock or thread. Inputs are [`Swim::handle_message`],
//! [`Swim::handle_timeout`], [`Swim::join`], [`Swim::leave`] and
//! [`Swim::set_metadata`], each with the current `now`; outputs (datagrams to
//! send, membership events, probe round-trip times) are drained with
//! [`Swim::poll_output`]; [`Swim::poll_timeout`] is the next deadline. Its
//! randomness is a `DetRng` it owns, so one seed replays one run.
//!
//! # Model
//!
//! Every node keeps a record per member: an **incarnation** (a number only
//! the member itself raises) and a **state**:
//!
//! * `Alive`: answers probes; carries the member's metadata (≤ 512 bytes).
//! * `Suspect`: someone's probe failed; the member is declared `Dead` after
//!   the suspicion timeout unless it refutes.
//! * `Dead`: declared failed. `Left`: left gracefully (like `Dead`, but said
//!   by the member itself). Both are **tombstones**: kept `gc_after`, then
//!   removed and never gossiped again.
//!
//! **Merge rules** (SWIM / memberlist), for a statement about member `m` at
//! incarnation `i` against our record at `j`:
//!
//! * `Alive(i)` wins over any record with `i > j` (so a dead member comes
//!   back only with a higher incarnation);
//! * `Suspect(i)` wins over `Alive(j)` when `i ≥ j`; over `Suspect(j)` when
//!   `i > j`; at `i = j` it is a *confirmation* of the running suspicion;
//! * `Dead(i)` / `Left(i)` win over `Alive`/`Suspect(j)` when `i ≥ j`; a
//!   tombstone is never replaced by another tombstone;
//! * statements about members we do not know are ignored, except `Alive`
//!   (a new member) and a `Suspect` in a push-pull list (a member that
//!   exists, suspected);
//! * in a push-pull exchange (`Join`/`Sync`, a sender's whole list) `Dead` is
//!   taken as `Suspect`, so a member wrongly declared dead on the other side
//!   of a healed partition gets to refute instead of dying here too.
//!
//! About itself a node is the authority: any `Suspect`/`Dead`/`Left` at an
//! incarnation ≥ its own, or an `Alive` that is newer or carries other
//! metadata (an earlier run of this node), makes it **refute**: raise its
//! incarnation above the statement and gossip `Alive`. So a node restarted
//! with a *lower* incarnation than its tombstone learns of it (whoever holds
//! the tombstone sends it back, see *buddy*) and jumps above it
//! (memberlist#345). A *stale* statement (below our incarnation: a
//! suspicion we refuted, or an older `Alive`, that the sender still holds)
//! cannot be outbid and needs no new incarnation, but it is answered: our
//! current `Alive` is queued again (unless still queued), so the holder of
//! the stale record — and whoever it would pass it on to — learns it. Incarnations of a record
//! only grow; the code asserts it.
//!
//! # Protocol
//!
//! * **Probe**: every protocol period the next member of a shuffled
//!   round-robin list gets a `Ping`. No `Ack` within the probe timeout: `k`
//!   (`indirect_checks`) random alive members get a `PingReq`, ping the
//!   target themselves and relay its `Ack`. No ack by the end of the period:
//!   the target becomes `Suspect` at the incarnation it had when probed —
//!   unless the *phi gate* defers it (below).
//! * **Dissemination**: every accepted change is queued and piggybacked on
//!   the next `Ping`/`Ack`/`PingReq`/`Nack`, least-sent first (newest first
//!   among equals), within `max_packet_bytes`; an update is sent
//!   `retransmit_mult · ⌈log2(N + 1)⌉` times. While anything is queued,
//!   every `gossip_interval` (200 ms) a `Gossip` packet also carries it to
//!   `gossip_nodes` (3) random members, tombstones included (memberlist's
//!   gossip timer), so a suspicion reaches its suspect — and the
//!   refutation everyone — within a few hundred milliseconds instead of a
//!   protocol period per hop.
//! * **Join**: push-pull with the seeds: `Join` carries our whole list, the
//!   seed merges it and answers `Sync` with its own. Datagrams get lost:
//!   until a first `Sync` has arrived, every seed stays an announce
//!   candidate, so the join is retried (hearing *of* a seed through gossip
//!   is not having its list).
//! * **Announce**: every `announce_interval` a push-pull with one random
//!   tombstone (dead or left, not yet collected) or seed we do not see alive
//!   (any seed before the first `Sync`), so a partitioned side, or a node
//!   isolated long enough to have forgotten everyone, merges back (foca#15).
//! * **Push-pull**: every `push_pull_interval` (30 s) the same exchange with
//!   one random alive member, anti-entropy for gossip lost on the way.
//! * **Strangers**: a packet (other than a push-pull) from a member we have
//!   no record of means it knows us and we missed it (its join reached
//!   others, or we forgot it while it lived on): we push-pull with it, at
//!   most once per `announce_interval`.
//! * **Leave**: `Left` at our incarnation, pushed to a few members at once
//!   and piggybacked after; a leaving node refutes nothing.
//!
//! # Lifeguard
//!
//! * **Local health multiplier** (LHM, `0..=lhm_max`): +1 per missing
//!   `Nack` of a failed probe (or +1 for a failed probe that asked nobody),
//!   +1 when refuting a suspicion about ourselves, −1 for a probe that got
//!   its `Ack`. Probe interval and probe timeout are scaled by `LHM + 1`: a
//!   node that is slow itself probes less and waits longer before accusing.
//! * **Nack**: a relay that hears no `Ack` within 80 % of its probe timeout
//!   sends `Nack`, so the requester can tell "target silent" from "I am not
//!   hearing anyone".
//! * **Dogpile**: a suspicion starts long and shortens with each independent
//!   confirmation (see [`suspicion`]).
//! * **Buddy system**: a packet to a member we hold as suspect (or dead, or
//!   left) carries that record, so the member can refute at once.
//!
//! [`SwimConfig::lifeguard`] switches all four off (plain SWIM), so the
//! simulator can measure what Lifeguard buys.
//!
//! # Phi gate
//!
//! Each node keeps a phi-accrual detector ([`crate::phi`]) per member, fed
//! with the times (`now`, the core's input, never the OS clock) of that
//! member's **answered probe rounds** (a direct `Ack`, or one relayed by a
//! helper). A failed probe round of a member we hold `Alive` at the probed
//! incarnation accuses it only if
//!
//! * phi for it, at the end of the round, is at or above
//!   `phi.threshold` (default 8: its answers are overdue by its own
//!   history's measure, e.g. its earlier rounds failed too), or
//! * the gate has already **deferred** `phi_gate_max_deferrals` failed
//!   rounds of it in a row (default 2).
//!
//! Otherwise the failure is deferred: counted (`suspicions_deferred`) and
//! the member is probed again in the **next** protocol period (not at its
//! turn in the round), so a member that stays silent is accused at most
//! `phi_gate_max_deferrals` periods later than without the gate. The count
//! starts again after each answered round of the member and whenever its
//! record changes state. A member we hold `Suspect` already is not gated
//! (the failed round confirms the running suspicion). A member with no
//! answered round yet has phi 0, so the cap alone decides. Why: one lost
//! round is what loss does to a healthy member (at 10 % loss a round of
//! 3 helpers fails with probability about 0.8 %, two in a row 0.006 %),
//! while a crashed member fails every round; the gate trades at most
//! `phi_gate_max_deferrals` protocol periods of detection time for far
//! fewer false suspicions (the membership scenarios' tallies measure
//! both). `phi_gate_max_deferrals = 0` switches the gate off: every failed
//! round accuses at once, plain SWIM's rule.
//!
//! Every direct `Ack` also yields an [`Output::ProbeRtt`] (observers);
//! [`Swim::phi`] and [`Swim::phi_snapshots`] expose the detectors.
//!
//! Restart is a new [`Swim`] with a fresh incarnation (any value works: the
//! refutation rule raises it above whatever the cluster remembers), then
//! [`Swim::join`].

mod broadcasts;
pub mod suspicion;
pub mod text;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::time::{Duration, Instant};

use crate::phi::{PhiAccrual, PhiConfig, PhiSnapshot};
use broadcasts::Broadcasts;
use suspicion::Suspicion;
use wire::{MAX_HEADER_BYTES, MAX_METADATA, MAX_UPDATE_BYTES, MAX_UPDATES, Message, Packet, Update, UpdateKind};

/// The most ping-req relays one node runs at once (the rest are dropped).
pub const MAX_RELAYS: usize = 1024;

/// Tunables. [`SwimConfig::default`] is memberlist's LAN configuration,
/// plus the phi gate (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct SwimConfig {
    /// Length of a protocol period (one probe each), before LHM scaling.
    pub probe_interval: Duration,
    /// How long a direct probe waits for its `Ack` before asking for
    /// indirect probes, before LHM scaling.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly (`k`).
    pub indirect_checks: usize,
    /// Suspicion timeout multiplier (memberlist `SuspicionMult`).
    pub suspicion_mult: u32,
    /// The longest suspicion is this many times the shortest
    /// (memberlist `SuspicionMaxTimeoutMult`).
    pub suspicion_max_timeout_mult: u32,
    /// An update is piggybacked `retransmit_mult · ⌈log2(N + 1)⌉` times.
    pub retransmit_mult: u32,
    /// Highest local health multiplier; timeouts scale by up to
    /// `lhm_max + 1` (memberlist `AwarenessMaxMultiplier` = `lhm_max + 1`).
    pub lhm_max: u32,
    /// Byte budget of one probe packet (memberlist `UDPBufferSize`).
    pub max_packet_bytes: usize,
    /// Byte budget of one `Join`/`Sync` packet (larger lists are split).
    pub max_sync_bytes: usize,
    /// Tombstones (dead, left) are forgotten this long after the change.
    pub gc_after: Duration,
    /// Interval between announces to tombstones or unseen seeds.
    pub announce_interval: Duration,
    /// Interval between push-pulls with one random alive member, the
    /// anti-entropy that repairs gossip lost on the way (memberlist
    /// `PushPullInterval`); zero disables them.
    pub push_pull_interval: Duration,
    /// Interval between gossip rounds (memberlist `GossipInterval`): when
    /// updates are queued, a `Gossip` packet carrying them goes to
    /// `gossip_nodes` random members, so news (a suspicion, its
    /// refutation) spreads in fractions of a second rather than one hop
    /// per protocol period. Zero disables it (piggybacking only).
    pub gossip_interval: Duration,
    /// Members each gossip round goes to (memberlist `GossipNodes`).
    pub gossip_nodes: usize,
    /// Lifeguard on (the default). Off is plain SWIM, the comparison
    /// baseline: local health stays 0 (no scaling, `lhm_max` unused), a
    /// suspicion lasts exactly its minimum (no dogpile,
    /// `suspicion_max_timeout_mult` unused), `PingReq`s ask for no `Nack`,
    /// and packets carry no buddy record.
    pub lifeguard: bool,
    /// The phi-accrual detector kept per member, fed with its answered
    /// probe rounds; its `threshold` is the phi gate's (default
    /// [`PhiConfig::default`]: threshold 8, window 100).
    pub phi: PhiConfig,
    /// The phi gate: how many failed probe rounds of a member in a row may
    /// be deferred while its phi is under `phi.threshold` (default 2; each
    /// deferral probes it again the next period). 0 switches the gate off:
    /// a failed round accuses at once.
    pub phi_gate_max_deferrals: u32,
    /// Planted bugs switched on, so the simulator's power to catch them can
    /// be tested (SWIM checks the `Swim*` ones). Always none in production:
    /// see [`kaelix_core::planted`].
    pub planted: Planted,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            lhm_max: 7,
            max_packet_bytes: 1400,
            max_sync_bytes: 64 * 1024,
            gc_after: Duration::from_secs(30),
            announce_interval: Duration::from_secs(5),
            push_pull_interval: Duration::from_secs(30),
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            lifeguard: true,
            phi: PhiConfig::default(),
            phi_gate_max_deferrals: 2,
            planted: Planted::NONE,
        }
    }
}

impl SwimConfig {
    /// The same numbers as [`SwimConfig::default`] (memberlist's probe
    /// period, timeout, `k`, suspicion and retransmit multipliers) with
    /// Lifeguard off: plain SWIM, the baseline Lifeguard is measured against.
    pub fn without_lifeguard() -> Self {
        SwimConfig { lifeguard: false, ..SwimConfig::default() }
    }

    /// The same configuration with the phi gate off: a failed probe round
    /// accuses at once (SWIM's own rule, the baseline the gate is measured
    /// against).
    pub fn without_phi_gate(self) -> Self {
        SwimConfig { phi_gate_max_deferrals: 0, ..self }
    }

    fn validate(&self) {
        assert!(!self.probe_interval.is_zero(), "probe_interval must be positive");
        assert!(self.probe_timeout < self.probe_interval, "probe_timeout must be shorter than probe_interval");
        assert!(self.suspicion_mult >= 1, "suspicion_mult must be at least 1");
        assert!(self.retransmit_mult >= 1, "retransmit_mult must be at least 1");
        assert!(!self.announce_interval.is_zero(), "announce_interval must be positive");
        assert!(
            self.max_packet_bytes >= MAX_HEADER_BYTES + 2 * MAX_UPDATE_BYTES,
            "max_packet_bytes must hold a header and two of the largest updates"
        );
        assert!(self.max_sync_bytes >= self.max_packet_bytes, "max_sync_bytes must be at least max_packet_bytes");
        assert!(
            self.phi.threshold > 0.0 && self.phi.window >= 1,
            "the phi detector needs a positive threshold and a window"
        );
    }
}

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// A probe failed; dead after the suspicion timeout unless refuted.
    Suspect,
    /// Declared failed (a tombstone until collected).
    Dead,
    /// Left gracefully (a tombstone until collected).
    Left,
}

impl MemberState {
    /// Alive or suspect: still probed and counted in the cluster size.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// One member as [`Swim::members`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member.
    pub id: NodeId,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its metadata (from its latest `Alive`).
    pub metadata: Bytes,
}

/// A running suspicion, as [`Swim::suspicion`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuspicionInfo {
    /// When the suspect is declared dead unless it refutes.
    pub deadline: Instant,
    /// Independent confirmations counted (Lifeguard dogpile).
    pub confirmations: usize,
}

/// What happened to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MembershipEventKind {
    /// New, or back after being dead or left.
    Joined,
    /// Suspected of having failed.
    Suspect,
    /// Refuted a suspicion.
    Alive,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
    /// Changed its metadata.
    Updated,
}

/// A change of another member's state, for subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipEvent {
    /// What happened.
    pub kind: MembershipEventKind,
    /// To whom.
    pub member: NodeId,
    /// Its incarnation after the change.
    pub incarnation: u64,
    /// Its metadata after the change.
    pub metadata: Bytes,
}

/// Something the driver must do or may observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram.
    Send {
        /// Destination.
        to: NodeId,
        /// An encoded [`Packet`].
        message: Bytes,
    },
    /// A member's state changed.
    Event(MembershipEvent),
    /// A direct probe of `member` was answered after `rtt` (the seam for a
    /// phi-accrual detector).
    ProbeRtt {
        /// The probed member.
        member: NodeId,
        /// From sending the `Ping` to handling its `Ack`.
        rtt: Duration,
    },
}

/// Counters for observers and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Datagrams queued for sending.
    pub messages_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Datagrams handled.
    pub messages_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Datagrams dropped because they did not decode (or came from ourselves).
    pub malformed: u64,
    /// Probes started.
    pub probes: u64,
    /// Probes that ended with no `Ack`.
    pub probes_failed: u64,
    /// `PingReq`s sent.
    pub ping_reqs_sent: u64,
    /// `Nack`s sent as a relay.
    pub nacks_sent: u64,
    /// `Nack`s received for our probes.
    pub nacks_received: u64,
    /// Times we raised our incarnation to refute a statement about us.
    pub refutations: u64,
    /// Statements about us we could not outbid (incarnation at `u64::MAX`).
    pub unrefutable: u64,
    /// Stale statements about us (below our incarnation) answered by
    /// gossiping our current `Alive` again.
    pub reasserted: u64,
    /// Push-pulls with senders we had no record of.
    pub strangers_met: u64,
    /// Push-pulls started by announce.
    pub announces: u64,
    /// Periodic push-pulls with an alive member.
    pub push_pulls: u64,
    /// Tombstones forgotten.
    pub tombstones_collected: u64,
    /// `PingReq`s refused because [`MAX_RELAYS`] were running.
    pub relays_dropped: u64,
    /// Failed probe rounds the phi gate deferred instead of accusing.
    pub suspicions_deferred: u64,
}

#[derive(Clone, Debug)]
struct Member {
    incarnation: u64,
    state: MemberState,
    metadata: Bytes,
    /// When `state` last changed (a tombstone is collected `gc_after` later).
    since: Instant,
    /// Present exactly when `state` is `Suspect`.
    suspicion: Option<Suspicion>,
    /// Failed probe rounds the phi gate deferred in a row (reset by an
    /// answered round and by every change of state).
    deferred: u32,
}

impl Member {
    fn update(&self, member: NodeId) -> Update {
        let kind = match self.state {
            MemberState::Alive => UpdateKind::Alive { metadata: self.metadata.clone() },
            MemberState::Suspect => {
                UpdateKind::Suspect { accuser: self.suspicion.as_ref().expect("a suspect has a suspicion").accuser }
            }
            MemberState::Dead => UpdateKind::Dead,
            MemberState::Left => UpdateKind::Left,
        };
        Update { member, incarnation: self.incarnation, kind }
    }

    /// Moves to `state` at `incarnation`; incarnations only grow.
    fn set(&mut self, incarnation: u64, state: MemberState, now: Instant) {
        assert!(
            incarnation >= self.incarnation,
            "a member's incarnation went backwards: {} after {}",
            incarnation,
            self.incarnation
        );
        if state != self.state {
            self.since = now;
            self.deferred = 0;
        }
        self.incarnation = incarnation;
        self.state = state;
        if state != MemberState::Suspect {
            self.suspicion = None;
        }
    }
}

/// The probe of the current protocol period.
#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    /// The target's incarnation when probed (a failure suspects that one).
    incarnation: u64,
    seq: u64,
    sent: Instant,
    /// When to fall back to indirect probes.
    indirect_at: Instant,
    indirect_sent: bool,
    /// Members asked to probe indirectly.
    helpers: Vec<NodeId>,
    /// Helpers that sent a `Nack`.
    nacked: Vec<NodeId>,
}

/// A `PingReq` we serve: our own ping to `target` under a local sequence number.
#[derive(Clone, Debug)]
struct Relay {
    requester: NodeId,
    requester_seq: u64,
    target: NodeId,
    /// When to send the `Nack` (if one was asked for and not yet sent).
    nack_at: Option<Instant>,
    /// Late acks are still relayed until then.
    expires: Instant,
}

/// Where a statement came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Our own conclusion (a failed probe, an expired suspicion).
    Local,
    /// Piggybacked on a probe packet.
    Gossip,
    /// Part of this member's whole list (`Join`/`Sync`).
    Sync(NodeId),
}

/// The SWIM + Lifeguard state machine of one node incarnation.
#[derive(Debug)]
pub struct Swim {
    me: NodeId,
    config: SwimConfig,
    rng: DetRng,
    now: Instant,
    incarnation: u64,
    metadata: Bytes,
    left: bool,
    /// Every other member we know, tombstones included.
    members: BTreeMap<NodeId, Member>,
    /// This round's probe order, and how far it got.
    probe_order: Vec<NodeId>,
    probe_index: usize,
    probe: Option<Probe>,
    /// Start of the next protocol period.
    next_probe: Instant,
    next_seq: u64,
    relays: BTreeMap<u64, Relay>,
    lhm: u32,
    queue: Broadcasts,
    seeds: Vec<NodeId>,
    /// Whether a `Sync` (a member's whole list) has ever arrived.
    synced: bool,
    /// Senders we had no record of and pushed our state to, and when.
    strangers: BTreeMap<NodeId, Instant>,
    next_announce: Instant,
    next_push_pull: Instant,
    next_gossip: Instant,
    /// A member whose failed round the phi gate deferred: probed next.
    reprobe: Option<NodeId>,
    /// Phi-accrual detectors of members with an answered probe round.
    detectors: BTreeMap<NodeId, PhiAccrual>,
    /// Bumped whenever a detector is fed or dropped.
    phi_revision: u64,
    /// Bumped by every change of what [`Swim::members`] reports.
    revision: u64,
    /// What `members` reported at `revision` (tests check the bumps).
    #[cfg(test)]
    revised: (u64, Vec<MemberInfo>),
    outputs: VecDeque<Output>,
    stats: SwimStats,
}

impl Swim {
    /// A node `me` starting at `now` with `incarnation` (a restart passes a
    /// fresh one; refutation fixes any conflict) and `metadata`
    /// (≤ [`MAX_METADATA`] bytes). It knows nobody until [`Swim::join`] or a
    /// message from a member.
    pub fn new(me: NodeId, config: SwimConfig, rng: DetRng, now: Instant, incarnation: u64, metadata: Bytes) -> Self {
        config.validate();
        assert!(metadata.len() <= MAX_METADATA, "metadata over {MAX_METADATA} bytes");
        let mut swim = Swim {
            me,
            rng,
            now,
            incarnation,
            metadata,
            left: false,
            members: BTreeMap::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            probe: None,
            next_probe: now + config.probe_interval,
            next_seq: 1,
            relays: BTreeMap::new(),
            lhm: 0,
            queue: Broadcasts::default(),
            seeds: Vec::new(),
            synced: false,
            strangers: BTreeMap::new(),
            next_announce: now + config.announce_interval,
            next_push_pull: if config.push_pull_interval.is_zero() {
                Instant::MAX
            } else {
                now + config.push_pull_interval
            },
            next_gossip: if config.gossip_interval.is_zero() { Instant::MAX } else { now + config.gossip_interval },
            reprobe: None,
            detectors: BTreeMap::new(),
            phi_revision: 0,
            revision: 0,
            #[cfg(test)]
            revised: (0, Vec::new()),
            config,
            outputs: VecDeque::new(),
            stats: SwimStats::default(),
        };
        swim.queue.push(swim.self_update());
        #[cfg(test)]
        {
            swim.revised = (0, swim.members());
        }
        swim
    }

    // ----- queries -----------------------------------------------------

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether [`Swim::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Every known member, this node included, by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut all: Vec<MemberInfo> = self
            .members
            .iter()
            .map(|(&id, m)| MemberInfo { id, state: m.state, incarnation: m.incarnation, metadata: m.metadata.clone() })
            .collect();
        let pos = all.partition_point(|m| m.id < self.me);
        all.insert(pos, self.self_info());
        all
    }

    /// One member (this node included), if known.
    pub fn member(&self, id: NodeId) -> Option<MemberInfo> {
        if id == self.me {
            return Some(self.self_info());
        }
        self.members.get(&id).map(|m| MemberInfo {
            id,
            state: m.state,
            incarnation: m.incarnation,
            metadata: m.metadata.clone(),
        })
    }

    /// The running suspicion of `id`, if it is suspect: when it will be
    /// declared dead unless refuted, and how many independent confirmations
    /// shortened that.
    pub fn suspicion(&self, id: NodeId) -> Option<SuspicionInfo> {
        let s = self.members.get(&id)?.suspicion.as_ref()?;
        Some(SuspicionInfo { deadline: s.deadline(), confirmations: s.confirmations() })
    }

    /// Phi of `member` at `now` (0 without an answered probe round).
    pub fn phi(&self, member: NodeId, now: Instant) -> f64 {
        self.detectors.get(&member).map_or(0.0, |d| d.phi(now))
    }

    /// Every member's detector state (members with an answered probe
    /// round), to evaluate phi later without the core.
    pub fn phi_snapshots(&self) -> BTreeMap<NodeId, PhiSnapshot> {
        self.detectors.iter().filter_map(|(&id, d)| d.snapshot().map(|s| (id, s))).collect()
    }

    /// A number that changes whenever [`Swim::phi_snapshots`] would.
    pub fn phi_revision(&self) -> u64 {
        self.phi_revision
    }

    /// A number that changes whenever anything [`Swim::members`] reports
    /// changes (a driver copies the list only then).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Live members (alive or suspect), this node included.
    pub fn live_count(&self) -> usize {
        1 + self.members.values().filter(|m| m.state.is_live()).count()
    }

    /// The Lifeguard local health multiplier (0 = healthy, up to `lhm_max`).
    pub fn local_health(&self) -> u32 {
        self.lhm
    }

    /// The probe interval as scaled by local health.
    pub fn scaled_probe_interval(&self) -> Duration {
        self.scaled(self.config.probe_interval)
    }

    /// The probe timeout as scaled by local health.
    pub fn scaled_probe_timeout(&self) -> Duration {
        self.scaled(self.config.probe_timeout)
    }

    /// Updates still waiting to be piggybacked (a leaving node's driver
    /// can wait for its `Left` to go out before stopping).
    pub fn pending_broadcasts(&self) -> usize {
        self.queue.len()
    }

    /// Counters.
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &SwimConfig {
        &self.config
    }

    /// The number of transmissions each update gets at the current size.
    pub fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as u64 + 1;
        self.config.retransmit_mult * n.next_power_of_two().trailing_zeros()
    }

    fn self_info(&self) -> MemberInfo {
        MemberInfo {
            id: self.me,
            state: if self.left { MemberState::Left } else { MemberState::Alive },
            incarnation: self.incarnation,
            metadata: self.metadata.clone(),
        }
    }

    fn self_update(&self) -> Update {
        let kind = if self.left { UpdateKind::Left } else { UpdateKind::Alive { metadata: self.metadata.clone() } };
        Update { member: self.me, incarnation: self.incarnation, kind }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.lhm + 1)
    }

    // ----- inputs ------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        assert!(now >= self.now, "time went backwards: {} after {}", now, self.now);
        self.now = now;
    }

    /// Contacts `seeds` with a push-pull (`Join`), and remembers them for
    /// announces. Seeds that do not answer are retried by announce.
    pub fn join(&mut self, now: Instant, seeds: &[NodeId]) {
        self.advance(now);
        assert!(!self.left, "a node that left cannot join again: restart it");
        for &s in seeds {
            if s != self.me && !self.seeds.contains(&s) {
                self.seeds.push(s);
            }
        }
        for s in seeds.iter().copied().filter(|&s| s != self.me).collect::<BTreeSet<_>>() {
            self.send_state(s, Message::Join);
        }
        self.check_invariants();
    }

    /// Leaves gracefully: gossips `Left` at the current incarnation. The
    /// node keeps answering and piggybacking (the driver may wait for
    /// [`Swim::pending_broadcasts`] to drain) but accuses and refutes nobody.
    pub fn leave(&mut self, now: Instant) {
        self.advance(now);
        if self.left {
            return;
        }
        self.left = true;
        self.revision += 1;
        self.queue.push(self.self_update());
        let targets = self.random_members(self.config.indirect_checks, |_, m| m.state == MemberState::Alive);
        for to in targets {
            self.send(to, Message::Gossip);
        }
        self.check_invariants();
    }

    /// Replaces this node's metadata: raises the incarnation and gossips it.
    pub fn set_metadata(&mut self, now: Instant, metadata: Bytes) {
        self.advance(now);
        assert!(metadata.len() <= MAX_METADATA, "metadata over {MAX_METADATA} bytes");
        assert!(!self.left, "a node that left has no metadata to update");
        self.metadata = metadata;
        self.incarnation = self.incarnation.checked_add(1).expect("incarnation overflow");
        self.revision += 1;
        self.queue.push(self.self_update());
        self.check_invariants();
    }

    /// A datagram from `from`. Malformed ones are counted and dropped.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, bytes: Bytes) {
        self.advance(now);
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        if from == self.me {
            self.stats.malformed += 1;
            return;
        }
        let Ok(packet) = Packet::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let origin = match packet.message {
            Message::Join | Message::Sync => Origin::Sync(from),
            _ => Origin::Gossip,
        };
        for u in packet.updates {
            self.apply(u, origin);
        }
        match packet.message {
            Message::Ping { seq } => self.send(from, Message::Ack { seq }),
            Message::PingReq { seq, target, nack } => self.serve_ping_req(from, seq, target, nack),
            Message::Ack { seq } => self.on_ack(from, seq),
            Message::Nack { seq } => self.on_nack(from, seq),
            Message::Join => self.send_state(from, Message::Sync),
            Message::Sync => self.synced = true,
            Message::Gossip => {}
        }
        let exchanging = matches!(packet.message, Message::Join | Message::Sync);
        if !exchanging && !self.members.contains_key(&from) {
            self.meet(from);
        }
        self.check_invariants();
    }

    /// A member we have no record of talks to us (it knows us, we do not
    /// know it: we missed its join, or forgot it while it lived on): push
    /// our state to it, so its answer brings it — and whatever else it
    /// knows — to us. At most once per `announce_interval` per stranger.
    fn meet(&mut self, stranger: NodeId) {
        if self.left {
            return;
        }
        let now = self.now;
        let horizon = self.config.announce_interval;
        self.strangers.retain(|_, met| *met + horizon > now);
        if self.strangers.contains_key(&stranger) {
            return;
        }
        self.strangers.insert(stranger, now);
        self.stats.strangers_met += 1;
        self.send_state(stranger, Message::Join);
    }

    /// Acts on every deadline that has passed; early or spurious calls are
    /// harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        self.expire_relays();
        self.expire_suspicions();
        self.collect_tombstones();
        if let Some(p) = &self.probe
            && !p.indirect_sent
            && now >= p.indirect_at
            && now < self.next_probe
        {
            self.start_indirect();
        }
        if now >= self.next_probe {
            if let Some(p) = self.probe.take() {
                self.probe_failed(p);
            }
            self.start_probe();
        }
        if now >= self.next_announce {
            self.next_announce = now + self.config.announce_interval;
            self.announce();
        }
        if now >= self.next_push_pull {
            self.next_push_pull = now + self.config.push_pull_interval;
            self.push_pull();
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip();
        }
        self.check_invariants();
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next time [`Swim::handle_timeout`] has work (`None`: nothing
    /// scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_probe.min(self.next_announce).min(self.next_push_pull).min(self.next_gossip);
        if let Some(p) = &self.probe
            && !p.indirect_sent
        {
            t = t.min(p.indirect_at);
        }
        for r in self.relays.values() {
            t = t.min(r.expires).min(r.nack_at.unwrap_or(Instant::MAX));
        }
        for m in self.members.values() {
            match m.state {
                MemberState::Alive => {}
                MemberState::Suspect => t = t.min(m.suspicion.as_ref().expect("suspect").deadline()),
                MemberState::Dead | MemberState::Left => t = t.min(m.since + self.config.gc_after),
            }
        }
        // The deadline fields use `Instant::MAX` for "not armed".
        Some(t).filter(|&t| t != Instant::MAX)
    }

    // ----- sending -----------------------------------------------------

    fn emit(&mut self, to: NodeId, message: Bytes) {
        debug_assert_ne!(to, self.me, "no messages to self");
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += message.len() as u64;
        self.outputs.push_back(Output::Send { to, message });
    }

    fn event(&mut self, kind: MembershipEventKind, member: NodeId) {
        let m = &self.members[&member];
        let event = MembershipEvent { kind, member, incarnation: m.incarnation, metadata: m.metadata.clone() };
        self.outputs.push_back(Output::Event(event));
    }

    /// Sends `message` with piggybacked updates: first, if we hold `to` as
    /// not alive, that record (buddy system); then queued updates.
    fn send(&mut self, to: NodeId, message: Message) {
        let mut packet = Packet::new(message);
        let mut budget = self.config.max_packet_bytes - Packet::header_len(message);
        let mut skip = None;
        if self.config.lifeguard
            && let Some(m) = self.members.get(&to)
            && m.state != MemberState::Alive
        {
            let u = m.update(to);
            budget -= u.encoded_len();
            packet.updates.push(u);
            skip = Some(to);
        }
        let limit = self.retransmit_limit();
        let more = self.queue.take(budget, limit, skip, MAX_UPDATES - packet.updates.len());
        packet.updates.extend(more);
        self.emit(to, packet.encode());
    }

    /// Our whole list (ourselves first), as `first` then `Sync` packets of
    /// at most `max_sync_bytes` each.
    fn send_state(&mut self, to: NodeId, first: Message) {
        let mut all = vec![self.self_update()];
        all.extend(self.members.iter().map(|(&id, m)| m.update(id)));
        let mut message = first;
        let mut all = all.into_iter().peekable();
        while all.peek().is_some() {
            let mut packet = Packet::new(message);
            let mut size = Packet::header_len(message);
            while let Some(u) = all
                .next_if(|u| size + u.encoded_len() <= self.config.max_sync_bytes && packet.updates.len() < MAX_UPDATES)
            {
                size += u.encoded_len();
                packet.updates.push(u);
            }
            self.emit(to, packet.encode());
            message = Message::Sync;
        }
    }

    /// Up to `k` distinct random members passing `keep`.
    fn random_members(&mut self, k: usize, keep: impl Fn(NodeId, &Member) -> bool) -> Vec<NodeId> {
        let mut pool: Vec<NodeId> = self.members.iter().filter(|(id, m)| keep(**id, m)).map(|(id, _)| *id).collect();
        let k = k.min(pool.len());
        for i in 0..k {
            let j = self.rng.random_range(i..pool.len());
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    // ----- probing -----------------------------------------------------

    fn lhm_add(&mut self, delta: u32) {
        if !self.config.lifeguard {
            return;
        }
        self.lhm = self.lhm.saturating_add(delta).min(self.config.lhm_max);
    }

    fn lhm_sub(&mut self) {
        self.lhm = self.lhm.saturating_sub(1);
    }

    /// Adds a member that became live to this round's remaining probe order,
    /// at a random place, unless it is already to come.
    fn add_to_probe_order(&mut self, id: NodeId) {
        if self.probe_order[self.probe_index..].contains(&id) {
            return;
        }
        let at = self.rng.random_range(self.probe_index..=self.probe_order.len());
        self.probe_order.insert(at, id);
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        // A failed round the phi gate deferred gets another one at once.
        if let Some(id) = self.reprobe.take()
            && self.members.get(&id).is_some_and(|m| m.state.is_live())
        {
            return Some(id);
        }
        for _ in 0..2 {
            while let Some(&id) = self.probe_order.get(self.probe_index) {
                self.probe_index += 1;
                if self.members.get(&id).is_some_and(|m| m.state.is_live()) {
                    return Some(id);
                }
            }
            // A new round: every live member once, in a fresh random order.
            self.probe_order = self.members.iter().filter(|(_, m)| m.state.is_live()).map(|(id, _)| *id).collect();
            self.probe_index = 0;
            for i in (1..self.probe_order.len()).rev() {
                let j = self.rng.random_range(0..=i);
                self.probe_order.swap(i, j);
            }
        }
        None
    }

    fn start_probe(&mut self) {
        let now = self.now;
        self.next_probe = now + self.scaled(self.config.probe_interval);
        let Some(target) = self.next_probe_target() else { return };
        let seq = self.next_seq();
        let incarnation = self.members[&target].incarnation;
        self.probe = Some(Probe {
            target,
            incarnation,
            seq,
            sent: now,
            indirect_at: now + self.scaled(self.config.probe_timeout),
            indirect_sent: false,
            helpers: Vec::new(),
            nacked: Vec::new(),
        });
        self.stats.probes += 1;
        self.send(target, Message::Ping { seq });
    }

    fn start_indirect(&mut self) {
        let (target, seq) = {
            let p = self.probe.as_ref().expect("a probe is running");
            (p.target, p.seq)
        };
        let helpers =
            self.random_members(self.config.indirect_checks, |id, m| m.state == MemberState::Alive && id != target);
        for &h in &helpers {
            self.stats.ping_reqs_sent += 1;
            self.send(h, Message::PingReq { seq, target, nack: self.config.lifeguard });
        }
        let p = self.probe.as_mut().expect("a probe is running");
        p.indirect_sent = true;
        p.helpers = helpers;
    }

    fn probe_failed(&mut self, p: Probe) {
        self.stats.probes_failed += 1;
        if self.left {
            return;
        }
        // Lifeguard: each helper that did not even nack points at us; with
        // nobody to ask, the failure itself does.
        let missing = if p.helpers.is_empty() { 1 } else { (p.helpers.len() - p.nacked.len()) as u32 };
        self.lhm_add(missing);
        if self.phi_gate_defers(&p) {
            return;
        }
        let incarnation = if self.config.planted.is_on(PlantedBug::SwimAccuseNextIncarnation) {
            p.incarnation.saturating_add(1)
        } else {
            p.incarnation
        };
        let accusation = Update { member: p.target, incarnation, kind: UpdateKind::Suspect { accuser: self.me } };
        self.apply(accusation, Origin::Local);
    }

    /// The phi gate (see the module docs): whether the failed round `p`
    /// is deferred rather than accusing; if so, counts it and has the
    /// target probed again next period.
    fn phi_gate_defers(&mut self, p: &Probe) -> bool {
        let max = self.config.phi_gate_max_deferrals;
        let phi = self.phi(p.target, self.now);
        let threshold = self.config.phi.threshold;
        let Some(m) = self.members.get_mut(&p.target) else { return false };
        // Only a suspicion about to start is gated: a suspect's failed round
        // confirms, a newer incarnation makes the accusation stale anyway.
        if m.state != MemberState::Alive || m.incarnation != p.incarnation || m.deferred >= max || phi >= threshold {
            return false;
        }
        m.deferred += 1;
        self.stats.suspicions_deferred += 1;
        self.reprobe = Some(p.target);
        true
    }

    /// An answered probe round of `member`: a sign of life for its detector.
    fn heartbeat(&mut self, member: NodeId) {
        let now = self.now;
        let config = self.config.phi;
        // Detectors live and die with member records (collected together).
        let Some(m) = self.members.get_mut(&member) else { return };
        m.deferred = 0;
        self.detectors.entry(member).or_insert_with(|| PhiAccrual::new(config)).heartbeat(now);
        self.phi_revision += 1;
    }

    fn on_ack(&mut self, from: NodeId, seq: u64) {
        if let Some(p) = &self.probe
            && p.seq == seq
            && (from == p.target || p.helpers.contains(&from))
        {
            let target = p.target;
            if from == target {
                self.outputs.push_back(Output::ProbeRtt { member: from, rtt: self.now - p.sent });
            }
            self.probe = None;
            self.heartbeat(target);
            self.lhm_sub();
            return;
        }
        if self.relays.get(&seq).is_some_and(|r| r.target == from) {
            let r = self.relays.remove(&seq).expect("checked");
            self.send(r.requester, Message::Ack { seq: r.requester_seq });
        }
    }

    fn on_nack(&mut self, from: NodeId, seq: u64) {
        if let Some(p) = &mut self.probe
            && p.seq == seq
            && p.helpers.contains(&from)
            && !p.nacked.contains(&from)
        {
            p.nacked.push(from);
            self.stats.nacks_received += 1;
        }
    }

    fn serve_ping_req(&mut self, requester: NodeId, seq: u64, target: NodeId, nack: bool) {
        if target == self.me {
            self.send(requester, Message::Ack { seq });
            return;
        }
        if self.relays.len() >= MAX_RELAYS {
            self.stats.relays_dropped += 1;
            return;
        }
        let local = self.next_seq();
        let timeout = self.config.probe_timeout;
        self.relays.insert(
            local,
            Relay {
                requester,
                requester_seq: seq,
                target,
                nack_at: nack.then(|| self.now + timeout * 4 / 5),
                expires: self.now + timeout,
            },
        );
        self.send(target, Message::Ping { seq: local });
    }

    fn expire_relays(&mut self) {
        let now = self.now;
        let due: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, r)| r.expires <= now || r.nack_at.is_some_and(|t| t <= now))
            .map(|(&s, _)| s)
            .collect();
        for seq in due {
            let r = self.relays.get_mut(&seq).expect("listed");
            let nack = r.nack_at.filter(|&t| t <= now).map(|_| (r.requester, r.requester_seq));
            if nack.is_some() {
                r.nack_at = None;
            }
            if r.expires <= now {
                self.relays.remove(&seq);
            }
            if let Some((to, seq)) = nack {
                self.stats.nacks_sent += 1;
                self.send(to, Message::Nack { seq });
            }
        }
    }

    fn expire_suspicions(&mut self) {
        let now = self.now;
        let due: Vec<Update> = self
            .members
            .iter()
            .filter(|(_, m)| m.suspicion.as_ref().is_some_and(|s| s.deadline() <= now))
            .map(|(&member, m)| Update { member, incarnation: m.incarnation, kind: UpdateKind::Dead })
            .collect();
        for u in due {
            self.apply(u, Origin::Local);
        }
    }

    /// Forgets tombstones older than `gc_after`, and whatever about them is
    /// still queued: a collected member is never gossiped again.
    fn collect_tombstones(&mut self) {
        let horizon = self.config.gc_after;
        let now = self.now;
        let due: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| !m.state.is_live() && m.since + horizon <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.members.remove(&id);
            if self.detectors.remove(&id).is_some() {
                self.phi_revision += 1;
            }
            self.revision += 1;
            self.queue.remove(id);
            self.stats.tombstones_collected += 1;
        }
    }

    /// Push-pull with a random tombstone or a seed we do not see alive (any
    /// seed while no `Sync` has arrived: the join is not done).
    fn announce(&mut self) {
        if self.left {
            return;
        }
        let mut candidates: BTreeSet<NodeId> =
            self.members.iter().filter(|(_, m)| !m.state.is_live()).map(|(&id, _)| id).collect();
        for &s in &self.seeds {
            if !self.synced || !self.members.get(&s).is_some_and(|m| m.state.is_live()) {
                candidates.insert(s);
            }
        }
        if candidates.is_empty() {
            return;
        }
        let pick = self.rng.random_range(0..candidates.len());
        let to = *candidates.iter().nth(pick).expect("in range");
        self.stats.announces += 1;
        self.send_state(to, Message::Join);
    }

    /// A gossip round: queued updates to `gossip_nodes` random members.
    /// Tombstones are candidates too (memberlist gossips to the dead for
    /// `GossipToTheDeadTime`, here their `gc_after`): a member wrongly
    /// declared dead hears of it (buddy record) and refutes. Nothing is
    /// sent when nothing is queued, so a quiet cluster pays nothing. A
    /// leaving node keeps gossiping: its `Left` must get out.
    fn gossip(&mut self) {
        if self.queue.len() == 0 {
            return;
        }
        for to in self.random_members(self.config.gossip_nodes, |_, _| true) {
            // The earlier targets may have taken every transmission left;
            // then only a buddy record would be worth the packet.
            let buddy = self.config.lifeguard && self.members.get(&to).is_some_and(|m| m.state != MemberState::Alive);
            if self.queue.len() == 0 && !buddy {
                continue;
            }
            self.send(to, Message::Gossip);
        }
    }

    /// Anti-entropy: push-pull with one random alive member.
    fn push_pull(&mut self) {
        if self.left {
            return;
        }
        if let Some(to) = self.random_members(1, |_, m| m.state == MemberState::Alive).pop() {
            self.stats.push_pulls += 1;
            self.send_state(to, Message::Join);
        }
    }

    // ----- merging -----------------------------------------------------

    /// Applies one statement under the merge rules.
    fn apply(&mut self, u: Update, origin: Origin) {
        if u.member == self.me {
            self.apply_about_me(u);
            return;
        }
        let now = self.now;
        let id = u.member;
        let inc = u.incarnation;
        // A suspect in someone's whole list is a member we should know of.
        let adopt = matches!((&u.kind, origin), (UpdateKind::Suspect { .. }, Origin::Sync(_)));
        let kind = match (u.kind, origin) {
            (UpdateKind::Dead, Origin::Sync(from)) => UpdateKind::Suspect { accuser: from },
            (kind, _) => kind,
        };
        match kind {
            UpdateKind::Alive { metadata } => {
                let Some(m) = self.members.get_mut(&id) else {
                    let m = Member {
                        incarnation: inc,
                        state: MemberState::Alive,
                        metadata,
                        since: now,
                        suspicion: None,
                        deferred: 0,
                    };
                    self.members.insert(id, m);
                    self.revision += 1;
                    self.queue.push(self.members[&id].update(id));
                    self.add_to_probe_order(id);
                    self.event(MembershipEventKind::Joined, id);
                    return;
                };
                // Planted bug: an Alive at the incarnation held wins too.
                let stale_wins = inc == m.incarnation
                    && m.state != MemberState::Alive
                    && self.config.planted.is_on(PlantedBug::SwimAliveIgnoresIncarnation);
                if inc <= m.incarnation && !stale_wins {
                    return;
                }
                let before = m.state;
                let changed = m.metadata != metadata;
                m.set(inc, MemberState::Alive, now);
                m.metadata = metadata;
                self.revision += 1;
                let update = m.update(id);
                self.queue.push(update);
                match before {
                    MemberState::Dead | MemberState::Left => {
                        self.add_to_probe_order(id);
                        self.event(MembershipEventKind::Joined, id);
                    }
                    MemberState::Suspect => {
                        self.event(MembershipEventKind::Alive, id);
                        if changed {
                            self.event(MembershipEventKind::Updated, id);
                        }
                    }
                    MemberState::Alive if changed => self.event(MembershipEventKind::Updated, id),
                    MemberState::Alive => {}
                }
            }
            UpdateKind::Suspect { accuser } => {
                let n = self.live_count();
                if adopt && !self.members.contains_key(&id) {
                    let m = Member {
                        incarnation: inc,
                        state: MemberState::Alive,
                        metadata: Bytes::new(),
                        since: now,
                        suspicion: None,
                        deferred: 0,
                    };
                    self.members.insert(id, m);
                    self.revision += 1;
                    self.add_to_probe_order(id);
                    self.event(MembershipEventKind::Joined, id);
                }
                let Some(m) = self.members.get_mut(&id) else { return };
                if inc < m.incarnation || !m.state.is_live() {
                    return;
                }
                if m.state == MemberState::Suspect && inc == m.incarnation {
                    // Dogpile: an independent confirmation shortens the timeout,
                    // and is passed on so others count it too (plain SWIM
                    // ignores it).
                    if self.config.lifeguard
                        && m.suspicion.as_mut().expect("a suspect has a suspicion").confirm(accuser)
                    {
                        self.queue.push(Update { member: id, incarnation: inc, kind: UpdateKind::Suspect { accuser } });
                    }
                    return;
                }
                m.set(inc, MemberState::Suspect, now);
                self.revision += 1;
                let c = &self.config;
                // Without Lifeguard's dogpile the longest suspicion is the shortest.
                let max_mult = if c.lifeguard { c.suspicion_max_timeout_mult } else { 1 };
                m.suspicion = Some(Suspicion::new(accuser, now, n, c.suspicion_mult, max_mult, c.probe_interval));
                let update = m.update(id);
                self.queue.push(update);
                self.event(MembershipEventKind::Suspect, id);
            }
            UpdateKind::Dead | UpdateKind::Left => {
                let Some(m) = self.members.get_mut(&id) else { return };
                if inc < m.incarnation {
                    return;
                }
                if !m.state.is_live() {
                    // Already a tombstone: only its incarnation may grow (so a
                    // restart of the member is still told the highest one).
                    if inc > m.incarnation {
                        m.incarnation = inc;
                        self.revision += 1;
                    }
                    return;
                }
                let (state, event) = if kind == UpdateKind::Left {
                    (MemberState::Left, MembershipEventKind::Left)
                } else {
                    (MemberState::Dead, MembershipEventKind::Dead)
                };
                m.set(inc, state, now);
                self.revision += 1;
                let update = m.update(id);
                self.queue.push(update);
                self.event(event, id);
            }
        }
    }

    /// A statement about this node: refute what is not true.
    fn apply_about_me(&mut self, u: Update) {
        if self.left {
            return;
        }
        let accusation = match &u.kind {
            UpdateKind::Alive { metadata } => {
                if u.incarnation < self.incarnation {
                    // Someone still spreads an older Alive of ours (an
                    // earlier run's, or from before a refutation they
                    // missed): tell them the current one.
                    self.reassert();
                    return;
                }
                if u.incarnation == self.incarnation && *metadata == self.metadata {
                    return;
                }
                false
            }
            UpdateKind::Dead | UpdateKind::Left if self.config.planted.is_on(PlantedBug::SwimIgnoreOwnTombstone) => {
                return;
            }
            UpdateKind::Suspect { .. } | UpdateKind::Dead | UpdateKind::Left => {
                if u.incarnation < self.incarnation {
                    // Stale: we refuted it already, but the sender (a buddy
                    // record, or gossip) still holds it and our refutation's
                    // transmissions may be spent. Gossip our current Alive
                    // again, or the stale record could outlive us there and
                    // be passed on (e.g. to a restarted member in a Sync).
                    self.reassert();
                    return;
                }
                // Lifeguard counts being *suspected*: a death or a leave at
                // our incarnation is a previous run of ours or the other
                // side of a partition speaking, not a sign of slowness.
                matches!(u.kind, UpdateKind::Suspect { .. })
            }
        };
        let Some(next) = u.incarnation.checked_add(1) else {
            self.stats.unrefutable += 1;
            return;
        };
        assert!(next > self.incarnation, "a refutation must raise the incarnation");
        if !self.config.planted.is_on(PlantedBug::SwimRefuteWithoutIncarnation) {
            self.incarnation = next;
            self.revision += 1;
        }
        self.stats.refutations += 1;
        if accusation {
            self.lhm_add(1);
        }
        self.queue.push(self.self_update());
    }

    /// Queues our current `Alive` again (unless it is still queued): the
    /// answer to a stale statement about us.
    fn reassert(&mut self) {
        if !self.queue.contains(self.me) {
            self.stats.reasserted += 1;
            self.queue.push(self.self_update());
        }
    }

    fn check_invariants(&mut self) {
        #[cfg(test)]
        {
            let members = self.members();
            if self.revised.0 == self.revision {
                assert_eq!(self.revised.1, members, "the member list changed without a revision bump");
            }
            self.revised = (self.revision, members);
        }
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(!self.members.contains_key(&self.me), "this node is not its own member record");
        assert!(self.lhm <= self.config.lhm_max, "LHM over its maximum");
        for (id, m) in &self.members {
            assert_eq!(m.state == MemberState::Suspect, m.suspicion.is_some(), "{id}: suspicion iff suspect");
            assert!(m.deferred <= self.config.phi_gate_max_deferrals, "{id}: phi gate over its deferrals");
            assert!(m.deferred == 0 || m.state == MemberState::Alive, "{id}: only alive members are deferred");
        }
        assert!(self.detectors.keys().all(|id| self.members.contains_key(id)), "a detector outlived its member");
        if let Some(p) = &self.probe {
            assert_ne!(p.target, self.me, "never probe ourselves");
            assert!(p.nacked.iter().all(|n| p.helpers.contains(n)), "nacks only from helpers");
        }
        assert!(self.probe_index <= self.probe_order.len());
        assert!(self.relays.len() <= MAX_RELAYS);
    }
}

#[cfg(test)]
mod tests;

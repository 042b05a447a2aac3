//! Replicated broadcast: clients submit values to any node; every node
//! stores every value durably; a value is acknowledged once it is durable on
//! `ack_replicas` nodes.
//!
//! # Protocol
//!
//! * A node that receives `Submit(v)` from a client stores `v` (a disk
//!   write, then a sync) and sends `Replicate(v)` to every peer.
//! * A node that receives `Replicate(v)` stores it and, once it is durable,
//!   answers `Stored(id)`.
//! * The node that took the submit acknowledges the client once `v` is
//!   durable locally **and** `ack_replicas - 1` peers answered `Stored`.
//!   Unanswered replicates are retransmitted.
//! * Anti-entropy: every `anti_entropy` interval a node sends a digest of
//!   its *settled* ids (held for at least `settle`) to one random peer. On
//!   mismatch the peer answers with a digest per bucket of the id space
//!   (`Buckets`); the first node answers with its ids in the buckets that
//!   differ (`Have`), and the peer sends what the first lacks and asks for
//!   what it lacks itself (`Want`). Values still being replicated are left
//!   out of the digests: retransmission covers them, and including them
//!   would make nearly every round under load an id exchange. Buckets keep
//!   an exchange proportional to the difference, not to all ids held.
//!
//! # Guarantees (what the simulator checks)
//!
//! * **Validity**: a node only ever holds values some client submitted,
//!   byte for byte (the log is checksummed; corrupt records are dropped).
//! * **Durability**: an acknowledged value survives any crashes, power
//!   losses and at most `ack_replicas - 1` disks that lose synced data.
//! * **Convergence**: once faults stop, every live node holds every
//!   acknowledged value within a few anti-entropy rounds.
//!
//! [`BroadcastCore`] is the sans-IO state machine; [`node`] is its driver.

pub mod log;
pub mod node;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::sansio::{WriteId, WriteIds};
use kaelix_core::time::{Duration, Instant};

use wire::{DIGEST_BUCKETS, PeerMessage, SetDigest, Value, bucket_of};

/// Configuration of one broadcast node.
#[derive(Clone, Debug)]
pub struct BroadcastConfig {
    /// Every member, this node included.
    pub members: Vec<NodeId>,
    /// Durable copies needed before a client is acknowledged (≥ 1).
    pub ack_replicas: usize,
    /// How long to wait for `Stored` before resending `Replicate`.
    pub retransmit: Duration,
    /// Interval between anti-entropy digests.
    pub anti_entropy: Duration,
    /// How long a value is held before anti-entropy digests include it.
    pub settle: Duration,
    /// Planted bugs switched on (broadcast checks `BroadcastAckBeforeSync`
    /// and `BroadcastSkipChecksum`); none in production, see
    /// [`kaelix_core::planted`].
    pub planted: Planted,
}

impl BroadcastConfig {
    /// Defaults for `members`: two durable copies, 50 ms retransmit,
    /// 100 ms anti-entropy over values held for 200 ms.
    pub fn new(members: Vec<NodeId>) -> Self {
        BroadcastConfig {
            members,
            ack_replicas: 2,
            retransmit: Duration::from_millis(50),
            anti_entropy: Duration::from_millis(100),
            settle: Duration::from_millis(200),
            planted: Planted::NONE,
        }
    }
}

/// Names the client connection an acknowledgement goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRef(pub u64);

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram to a peer.
    Send {
        /// Destination.
        to: NodeId,
        /// Encoded [`PeerMessage`].
        message: Bytes,
    },
    /// Append this value to the log and sync; report with
    /// [`BroadcastCore::handle_write_complete`].
    Persist {
        /// Completion key.
        id: WriteId,
        /// The value.
        value: Value,
    },
    /// Tell a client its value is acknowledged.
    Ack {
        /// The client.
        client: ClientRef,
        /// The value id.
        id: u64,
    },
    /// The node now holds a value it did not hold before (for observers).
    Learned(Value),
}

/// A set of members, as bits indexed by position in
/// [`BroadcastConfig::members`]: the per-value peer sets cost no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MemberSet(u64);

/// The most members a broadcast group may have ([`MemberSet`]'s width).
pub const MAX_MEMBERS: usize = 64;

impl MemberSet {
    fn insert(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    fn indices(self) -> impl Iterator<Item = usize> {
        (0..MAX_MEMBERS).filter(move |&i| self.contains(i))
    }
}

#[derive(Debug)]
struct Held {
    payload: Bytes,
    durable: bool,
    /// Peers that asked us to store it and await `Stored`.
    reply_stored: MemberSet,
}

#[derive(Debug)]
struct PendingAck {
    /// Clients awaiting the ack: nearly always one, so a short list.
    clients: Vec<ClientRef>,
    stored_on: MemberSet,
    next_retransmit: Instant,
}

/// Counters for observers and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BroadcastStats {
    /// Peer messages that failed to decode.
    pub malformed: u64,
    /// Replicates retransmitted.
    pub retransmits: u64,
    /// Anti-entropy rounds started.
    pub anti_entropy_rounds: u64,
}

/// The sans-IO broadcast state machine of one node incarnation.
#[derive(Debug)]
pub struct BroadcastCore {
    me: NodeId,
    config: BroadcastConfig,
    rng: DetRng,
    now: Instant,
    held: BTreeMap<u64, Held>,
    /// Every member but this node (shared: sends iterate it without allocating).
    peer_list: std::sync::Arc<[NodeId]>,
    /// Digest of the settled values, in all and per bucket.
    settled: SetDigest,
    settled_buckets: [SetDigest; DIGEST_BUCKETS],
    /// Values not yet settled, in the order learned.
    unsettled: VecDeque<(Instant, u64)>,
    pending: BTreeMap<u64, PendingAck>,
    writes: BTreeMap<WriteId, u64>,
    write_ids: WriteIds,
    next_anti_entropy: Instant,
    outputs: VecDeque<Output>,
    stats: BroadcastStats,
}

fn in_buckets(mask: u16, id: u64) -> bool {
    mask & (1 << bucket_of(id)) != 0
}

impl BroadcastCore {
    /// A core restarted from what the disk kept (`recovered`, all durable).
    pub fn new(me: NodeId, config: BroadcastConfig, rng: DetRng, now: Instant, recovered: Vec<Value>) -> Self {
        assert!(config.ack_replicas >= 1, "ack_replicas must be at least 1");
        assert!(config.ack_replicas <= config.members.len(), "ack_replicas exceeds the member count");
        assert!(config.members.contains(&me), "a node must be one of its members");
        assert!(config.members.len() <= MAX_MEMBERS, "at most {MAX_MEMBERS} members");
        assert!(
            config.members.iter().collect::<BTreeSet<_>>().len() == config.members.len(),
            "members must be distinct"
        );
        let mut core = BroadcastCore {
            me,
            rng,
            now,
            held: BTreeMap::new(),
            peer_list: config.members.iter().copied().filter(|&m| m != me).collect(),
            settled: SetDigest::default(),
            settled_buckets: [SetDigest::default(); DIGEST_BUCKETS],
            unsettled: VecDeque::new(),
            pending: BTreeMap::new(),
            writes: BTreeMap::new(),
            write_ids: WriteIds::default(),
            next_anti_entropy: now + config.anti_entropy,
            config,
            outputs: VecDeque::new(),
            stats: BroadcastStats::default(),
        };
        for v in recovered {
            if let std::collections::btree_map::Entry::Vacant(e) = core.held.entry(v.id) {
                core.settled.add(v.id);
                core.settled_buckets[bucket_of(v.id)].add(v.id);
                e.insert(Held { payload: v.payload.clone(), durable: true, reply_stored: MemberSet::default() });
                core.outputs.push_back(Output::Learned(v));
            }
        }
        core
    }

    fn advance(&mut self, now: Instant) {
        assert!(now >= self.now, "time went backwards: {} after {}", now, self.now);
        self.now = now;
    }

    /// Whether the node holds `id` (durably or not).
    pub fn holds(&self, id: u64) -> bool {
        self.held.contains_key(&id)
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> BroadcastStats {
        self.stats
    }

    fn durable_now(&self, h: &Held) -> bool {
        h.durable || self.config.planted.is_on(PlantedBug::BroadcastAckBeforeSync)
    }

    /// Starts holding `v` if new: queue its write. Returns whether it was new.
    fn learn(&mut self, v: Value) -> bool {
        if self.held.contains_key(&v.id) {
            return false;
        }
        let write = self.write_ids.next_id();
        self.writes.insert(write, v.id);
        self.unsettled.push_back((self.now, v.id));
        self.held.insert(v.id, Held { payload: v.payload.clone(), durable: false, reply_stored: MemberSet::default() });
        self.outputs.push_back(Output::Persist { id: write, value: v.clone() });
        self.outputs.push_back(Output::Learned(v));
        true
    }

    fn send(&mut self, to: NodeId, msg: &PeerMessage) {
        self.send_to_each(std::iter::once(to), msg);
    }

    /// Encodes `msg` once and queues the same bytes for every target.
    fn send_to_each(&mut self, targets: impl IntoIterator<Item = NodeId>, msg: &PeerMessage) {
        let message = msg.encode();
        for to in targets {
            debug_assert_ne!(to, self.me, "no messages to self");
            self.outputs.push_back(Output::Send { to, message: message.clone() });
        }
    }

    fn member_index(&self, node: NodeId) -> Option<usize> {
        self.config.members.iter().position(|&m| m == node)
    }

    /// A client submitted `v` on connection `client`.
    pub fn handle_client_submit(&mut self, now: Instant, client: ClientRef, v: Value) {
        self.advance(now);
        let id = v.id;
        self.learn(v.clone());
        let pending = self.pending.entry(id).or_insert_with(|| PendingAck {
            clients: Vec::new(),
            stored_on: MemberSet::default(),
            next_retransmit: now,
        });
        if !pending.clients.contains(&client) {
            pending.clients.push(client);
        }
        pending.next_retransmit = now + self.config.retransmit;
        let peers = self.peer_list.clone();
        self.send_to_each(peers.iter().copied(), &PeerMessage::Replicate(v));
        self.check_ack(id);
    }

    fn copies(&self, id: u64) -> usize {
        let local = self.held.get(&id).is_some_and(|h| self.durable_now(h));
        let remote = self.pending.get(&id).map_or(0, |p| p.stored_on.len());
        usize::from(local) + remote
    }

    fn check_ack(&mut self, id: u64) {
        if self.pending.contains_key(&id) && self.copies(id) >= self.config.ack_replicas {
            let p = self.pending.remove(&id).expect("checked");
            for client in p.clients {
                self.outputs.push_back(Output::Ack { client, id });
            }
        }
    }

    /// A datagram from a peer.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, bytes: Bytes) {
        self.advance(now);
        let Some(from_index) = self.member_index(from).filter(|_| from != self.me) else {
            self.stats.malformed += 1;
            return;
        };
        let msg = match PeerMessage::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match msg {
            PeerMessage::Replicate(v) => {
                let id = v.id;
                self.learn(v);
                let h = self.held.get_mut(&id).expect("just learned");
                if h.durable || self.config.planted.is_on(PlantedBug::BroadcastAckBeforeSync) {
                    self.send(from, &PeerMessage::Stored(id));
                } else {
                    h.reply_stored.insert(from_index);
                }
            }
            PeerMessage::Stored(id) => {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.stored_on.insert(from_index);
                    self.check_ack(id);
                }
            }
            PeerMessage::Digest(theirs) => {
                self.settle(now);
                if theirs != self.settled {
                    self.send(from, &PeerMessage::Buckets(Box::new(self.settled_buckets)));
                }
            }
            PeerMessage::Buckets(theirs) => {
                self.settle(now);
                let differing = (0..DIGEST_BUCKETS)
                    .filter(|&b| theirs[b] != self.settled_buckets[b])
                    .fold(0u16, |mask, b| mask | (1 << b));
                if differing != 0 {
                    let ids: Vec<u64> =
                        self.held.keys().copied().filter(|&id| in_buckets(differing, id)).take(wire::MAX_IDS).collect();
                    self.send(from, &PeerMessage::Have { buckets: differing, ids });
                }
            }
            PeerMessage::Have { buckets, mut ids } => {
                // Both sides are sorted id lists of the same buckets: one
                // merge pass finds what each lacks. A peer's list is sorted
                // and inside its buckets unless it is buggy.
                if !ids.is_sorted() {
                    ids.sort_unstable();
                }
                ids.dedup();
                ids.retain(|&id| in_buckets(buckets, id));
                let mut missing_there = Vec::new();
                let mut missing_here = Vec::new();
                let mut theirs = ids.into_iter().peekable();
                for (&id, h) in self.held.iter().filter(|(id, _)| in_buckets(buckets, **id)) {
                    while let Some(t) = theirs.next_if(|&t| t < id) {
                        missing_here.push(t);
                    }
                    if theirs.next_if_eq(&id).is_none() && h.durable {
                        missing_there.push(Value { id, payload: h.payload.clone() });
                    }
                }
                missing_here.extend(theirs);
                for v in missing_there {
                    self.send(from, &PeerMessage::Replicate(v));
                }
                if !missing_here.is_empty() {
                    self.send(from, &PeerMessage::Want(missing_here));
                }
            }
            PeerMessage::Want(ids) => {
                for id in ids {
                    if let Some(h) = self.held.get(&id) {
                        let v = Value { id, payload: h.payload.clone() };
                        self.send(from, &PeerMessage::Replicate(v));
                    }
                }
            }
        }
    }

    /// The write `id` completed: `ok` if it is durable (appended and synced).
    pub fn handle_write_complete(&mut self, now: Instant, id: WriteId, ok: bool) {
        self.advance(now);
        let Some(value_id) = self.writes.remove(&id) else { return };
        let Some(h) = self.held.get_mut(&value_id) else { return };
        if !ok {
            // Retry the write; the value stays non-durable until it lands.
            let write = self.write_ids.next_id();
            self.writes.insert(write, value_id);
            let value = Value { id: value_id, payload: h.payload.clone() };
            self.outputs.push_back(Output::Persist { id: write, value });
            return;
        }
        h.durable = true;
        let waiting = std::mem::take(&mut h.reply_stored);
        if waiting.len() > 0 {
            let peers: Vec<NodeId> = waiting.indices().map(|i| self.config.members[i]).collect();
            self.send_to_each(peers, &PeerMessage::Stored(value_id));
        }
        self.check_ack(value_id);
    }

    /// Timers: retransmits and anti-entropy. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let due: Vec<u64> = self.pending.iter().filter(|(_, p)| p.next_retransmit <= now).map(|(id, _)| *id).collect();
        for id in due {
            let Some(h) = self.held.get(&id) else { continue };
            let v = Value { id, payload: h.payload.clone() };
            let p = self.pending.get_mut(&id).expect("listed");
            p.next_retransmit = now + self.config.retransmit;
            let stored_on = p.stored_on;
            let targets: Vec<NodeId> = (0..self.config.members.len())
                .filter(|&i| !stored_on.contains(i))
                .map(|i| self.config.members[i])
                .filter(|&n| n != self.me)
                .collect();
            self.stats.retransmits += 1;
            self.send_to_each(targets, &PeerMessage::Replicate(v));
        }
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now + self.config.anti_entropy;
            let peers = self.peer_list.clone();
            if !peers.is_empty() {
                self.stats.anti_entropy_rounds += 1;
                let to = peers[self.rng.random_range(0..peers.len())];
                let digest = self.digest();
                self.send(to, &digest);
            }
        }
    }

    /// Moves values held for `settle` into the anti-entropy digest.
    fn settle(&mut self, now: Instant) {
        while let Some(&(learned, id)) = self.unsettled.front() {
            if learned + self.config.settle > now {
                break;
            }
            self.unsettled.pop_front();
            self.settled.add(id);
            self.settled_buckets[bucket_of(id)].add(id);
        }
    }

    /// The anti-entropy digest of the settled values (as of the last input).
    pub fn digest(&mut self) -> PeerMessage {
        let now = self.now;
        self.settle(now);
        PeerMessage::Digest(self.settled)
    }

    /// The next time [`Self::handle_timeout`] has work (`None`: nothing
    /// scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self.pending.values().map(|p| p.next_retransmit).min();
        // `next_anti_entropy` saturates at `Instant::MAX`, meaning "never".
        retransmit.into_iter().chain([self.next_anti_entropy]).min().filter(|&t| t != Instant::MAX)
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Clients that disconnected no longer need acks.
    pub fn handle_client_gone(&mut self, client: ClientRef) {
        for p in self.pending.values_mut() {
            p.clients.retain(|&c| c != client);
        }
        // Keep replicating values nobody waits for: they were accepted and
        // must still reach every node, but they need no retransmit timer
        // beyond what anti-entropy provides.
        self.pending.retain(|_, p| !p.clients.is_empty());
    }
}

#[cfg(test)]
mod tests;

//! A small replicated key-value store — an example of testing someone
//! else's service with Kaelix's simulator. Nothing here is Kaelix code: the
//! store is written only against the runtime contract
//! (`kaelix_core::runtime::Runtime`), and its tests
//! (`tests/kvstore/main.rs`) use only the public simulation API
//! (`kaelix_scenarios::harness`).
//!
//! # The store
//!
//! Primary-backup over datagrams: `replicas[0]` is the primary, the others
//! are backups. A client sends `Put` to the primary, which appends the
//! record to its write-ahead log, syncs it, sends `Replicate` to every
//! backup and answers `PutOk` once one backup has acknowledged the record
//! as synced too (so an acknowledged put is durable on two disks). `Get` is
//! answered by the primary from memory. On boot every replica rebuilds its
//! map from its log, cutting a torn tail (a record that does not parse).
//! The primary handles one put at a time; messages that arrive while it
//! waits for a backup are dropped, and clients retry (puts are idempotent:
//! the same key and value again).
//!
//! **Planted bug** ([`StoreConfig::ack_before_sync`]): the primary answers
//! `PutOk` as soon as the put arrives, before logging it: a crash right
//! after loses an acknowledged put.

use std::collections::BTreeMap;

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::runtime::{Runtime, StorageFile, timeout};
use kaelix_core::time::Duration;
use serde::{Deserialize, Serialize};

/// The store's messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client → primary: set `key` to `value`.
    Put {
        /// The client's request id (echoed in the answer).
        req: u64,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Primary → client: the put is durable on two replicas.
    PutOk {
        /// The request answered.
        req: u64,
    },
    /// Client → primary: read `key`.
    Get {
        /// The client's request id.
        req: u64,
        /// The key.
        key: String,
    },
    /// Primary → client: the value, if any.
    GetOk {
        /// The request answered.
        req: u64,
        /// The value.
        value: Option<String>,
    },
    /// Primary → backup: log this record.
    Replicate {
        /// Sequence number of the primary's put.
        seq: u64,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Backup → primary: the record is synced.
    Replicated {
        /// The sequence number acknowledged.
        seq: u64,
    },
}

impl Message {
    /// The datagram.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("messages serialize"))
    }

    /// Parses a datagram; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A replica's configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Every replica; the first is the primary.
    pub replicas: Vec<NodeId>,
    /// How long the primary waits for a backup's acknowledgement.
    pub replicate_timeout: Duration,
    /// Planted bug: acknowledge a put before logging it.
    pub ack_before_sync: bool,
}

impl StoreConfig {
    /// A correct store on `replicas` (the first is the primary).
    pub fn new(replicas: Vec<NodeId>) -> StoreConfig {
        assert!(replicas.len() >= 2, "a replicated store needs a primary and a backup");
        StoreConfig { replicas, replicate_timeout: Duration::from_millis(100), ack_before_sync: false }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    value: String,
}

/// The write-ahead log: one JSON record per line.
struct Wal<F: StorageFile> {
    file: F,
}

impl<F: StorageFile> Wal<F> {
    /// Reads every whole record; cuts the file after the last one (a crash
    /// may have torn the unsynced tail).
    async fn recover(file: F) -> (Wal<F>, BTreeMap<String, String>) {
        let mut map = BTreeMap::new();
        let bytes = file.read_at(0, file.len() as usize).await.unwrap_or_default();
        let mut good = 0usize;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let Some(record) = line.strip_suffix(b"\n").and_then(|l| serde_json::from_slice::<Record>(l).ok()) else {
                break;
            };
            map.insert(record.key, record.value);
            good += line.len();
        }
        if good < bytes.len() {
            // Nothing after a torn record was acknowledged: it was unsynced.
            let _ = file.truncate(good as u64).await;
            let _ = file.sync().await;
        }
        (Wal { file }, map)
    }

    /// Appends and syncs one record.
    async fn log(&self, key: &str, value: &str) -> bool {
        let mut line = serde_json::to_vec(&Record { key: key.into(), value: value.into() }).expect("serializes");
        line.push(b'\n');
        self.file.append(Bytes::from(line)).await.is_ok() && self.file.sync().await.is_ok()
    }
}

/// Runs one replica until the node stops (its init function: called again
/// after every restart, with only the disk kept).
pub async fn run_replica<R: Runtime>(rt: R, config: StoreConfig) {
    let Ok(file) = rt.open("kv.wal").await else { return };
    let (wal, mut map) = Wal::recover(file).await;
    let primary = config.replicas[0];
    let me = rt.node_id();
    let mut seq = 0u64;
    loop {
        let (from, bytes) = rt.recv().await;
        let Some(message) = Message::decode(&bytes) else { continue };
        match message {
            Message::Put { req, key, value } if me == primary => {
                if config.ack_before_sync {
                    rt.send(from, Message::PutOk { req }.encode());
                }
                if !wal.log(&key, &value).await {
                    continue;
                }
                map.insert(key.clone(), value.clone());
                seq += 1;
                let replicate = Message::Replicate { seq, key, value }.encode();
                for &backup in &config.replicas[1..] {
                    rt.send(backup, replicate.clone());
                }
                if await_replicated(&rt, seq, config.replicate_timeout).await && !config.ack_before_sync {
                    rt.send(from, Message::PutOk { req }.encode());
                }
            }
            Message::Get { req, key } if me == primary => {
                rt.send(from, Message::GetOk { req, value: map.get(&key).cloned() }.encode());
            }
            Message::Replicate { seq, key, value } if me != primary => {
                if !wal.log(&key, &value).await {
                    continue;
                }
                map.insert(key, value);
                rt.send(from, Message::Replicated { seq }.encode());
            }
            _ => {}
        }
    }
}

/// Waits for a backup's acknowledgement of `seq`; other messages are
/// dropped (their senders retry).
async fn await_replicated<R: Runtime>(rt: &R, seq: u64, within: Duration) -> bool {
    let wait = async {
        loop {
            let (_, bytes) = rt.recv().await;
            if Message::decode(&bytes) == Some(Message::Replicated { seq }) {
                return;
            }
        }
    };
    timeout(rt, within, wait).await.is_ok()
}

/// A client of the store: puts and gets against the primary, retrying
/// until answered or `attempts` run out.
pub struct StoreClient<R: Runtime> {
    rt: R,
    primary: NodeId,
    next_req: u64,
    /// How long one attempt waits for its answer.
    pub attempt_timeout: Duration,
}

impl<R: Runtime> StoreClient<R> {
    /// A client of the store whose primary is `primary`.
    pub fn new(rt: R, primary: NodeId) -> StoreClient<R> {
        let next_req = rt.node_id().0 << 32;
        StoreClient { rt, primary, next_req, attempt_timeout: Duration::from_millis(300) }
    }

    async fn call(&mut self, make: impl Fn(u64) -> Message, attempts: u32) -> Option<Message> {
        self.next_req += 1;
        let req = self.next_req;
        for _ in 0..attempts {
            self.rt.send(self.primary, make(req).encode());
            let answer = async {
                loop {
                    let (_, bytes) = self.rt.recv().await;
                    match Message::decode(&bytes) {
                        Some(m @ Message::PutOk { req: r }) if r == req => return m,
                        Some(m @ Message::GetOk { req: r, .. }) if r == req => return m,
                        _ => {}
                    }
                }
            };
            if let Ok(m) = timeout(&self.rt, self.attempt_timeout, answer).await {
                return Some(m);
            }
        }
        None
    }

    /// Sets `key`; `true` once acknowledged (durable on two replicas).
    pub async fn put(&mut self, key: &str, value: &str, attempts: u32) -> bool {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(|req| Message::Put { req, key: key.clone(), value: value.clone() }, attempts).await.is_some()
    }

    /// Reads `key`: `Some(value or None)` once answered.
    pub async fn get(&mut self, key: &str, attempts: u32) -> Option<Option<String>> {
        let key = key.to_owned();
        match self.call(|req| Message::Get { req, key: key.clone() }, attempts).await {
            Some(Message::GetOk { value, .. }) => Some(value),
            _ => None,
        }
    }

    /// The client's clock (for workloads that pace themselves).
    pub fn now(&self) -> kaelix_core::Instant {
        self.rt.now()
    }

    /// Waits `d` on the client's clock.
    pub async fn sleep(&self, d: Duration) {
        self.rt.sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_ignored() {
        let m = Message::Put { req: 7, key: "k".into(), value: "v\n\"x".into() };
        assert_eq!(Message::decode(&m.encode()), Some(m));
        assert_eq!(Message::decode(b"\x00garbage"), None);
    }
}

//! A slab of entries addressed by generation-checked keys.
//!
//! The simulator keeps tasks, timers and pending operations here: O(1)
//! lookups on the hot path, and no hashing. A slot is reused after its entry
//! is removed, so every key carries the sequence number of its insert and a
//! stale key (a late wake of a finished task, a cancelled timer's event)
//! finds nothing rather than a newer entry in the same slot. Iteration is in
//! slot order, which depends only on the run's own history.

/// A key into a [`Table`]: a sequence number unique within the table (the
/// order keys compare in) and a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    seq: u64,
    slot: usize,
}

impl Key {
    /// The insert's sequence number: unique in the table, increasing.
    pub fn seq(self) -> u64 {
        self.seq
    }
}

/// A typed id backed by a [`Key`] (task, timer and operation ids).
pub(crate) trait TableKey: Copy {
    fn from_key(key: Key) -> Self;
    fn key(self) -> Key;
}

impl TableKey for Key {
    fn from_key(key: Key) -> Self {
        key
    }
    fn key(self) -> Key {
        self
    }
}

/// Entries by typed key `K`.
#[derive(Debug)]
pub(crate) struct Table<K, T> {
    slab: slab::Slab<(u64, T)>,
    next_seq: u64,
    _key: std::marker::PhantomData<K>,
}

impl<K, T> Default for Table<K, T> {
    fn default() -> Self {
        Table { slab: slab::Slab::new(), next_seq: 0, _key: std::marker::PhantomData }
    }
}

impl<K: TableKey, T> Table<K, T> {
    /// A key that is never inserted (it finds nothing).
    pub(crate) fn unused_key(&mut self) -> K {
        self.next_seq += 1;
        K::from_key(Key { seq: self.next_seq, slot: usize::MAX })
    }

    pub(crate) fn insert(&mut self, value: T) -> K {
        self.next_seq += 1;
        let slot = self.slab.insert((self.next_seq, value));
        K::from_key(Key { seq: self.next_seq, slot })
    }

    pub(crate) fn get(&self, key: &K) -> Option<&T> {
        let key = key.key();
        self.slab.get(key.slot).filter(|(seq, _)| *seq == key.seq).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut T> {
        let key = key.key();
        self.slab.get_mut(key.slot).filter(|(seq, _)| *seq == key.seq).map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<T> {
        self.contains_key(key).then(|| self.slab.remove(key.key().slot).1)
    }

    /// Keeps the entries `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.slab.retain(|_, (_, v)| keep(v));
    }

    /// Entries with their keys, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slab.iter().map(|(slot, (seq, v))| (K::from_key(Key { seq: *seq, slot }), v))
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.slab.clear();
    }

    /// Removes and returns every entry.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.slab.drain().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_finds_nothing_after_slot_reuse() {
        let mut t: Table<Key, &str> = Table::default();
        let a = t.insert("a");
        assert_eq!(t.remove(&a), Some("a"));
        let b = t.insert("b");
        assert_eq!(a.slot, b.slot, "the slot is reused");
        assert_eq!(t.get(&a), None);
        assert_eq!(t.remove(&a), None);
        assert_eq!(t.get(&b), Some(&"b"));
        assert!(b > a, "keys compare in insert order");
    }

    #[test]
    fn unused_key_is_never_found() {
        let mut t: Table<Key, u8> = Table::default();
        let k = t.unused_key();
        t.insert(1);
        assert_eq!(t.get(&k), None);
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn retain_and_iter() {
        let mut t: Table<Key, i32> = Table::default();
        let keys: Vec<Key> = (0..6).map(|i| t.insert(i)).collect();
        t.retain(|v| v % 2 == 0);
        let left: Vec<(Key, i32)> = t.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(left, vec![(keys[0], 0), (keys[2], 2), (keys[4], 4)]);
    }
}

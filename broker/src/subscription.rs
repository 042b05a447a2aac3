//! The broker's routing index: which subscribers does a published topic reach?
//!
//! Subscribers register [`Pattern`]s (NATS rules, see [`crate::topic`]). A
//! publish on a [`Topic`] must reach every subscriber that has at least one
//! matching pattern, exactly once. [`SubscriptionIndex`] answers that question
//! with two structures.
//!
//! # A token trie
//!
//! A pattern is a path of tokens from the root. Every node holds
//!
//! * its literal children, in a `Vec` sorted by token (binary search),
//! * an optional `*` child,
//! * the sorted ids whose pattern ends at the node (`ending`),
//! * the sorted ids subscribed to the node's path followed by `>` (`tail`).
//!
//! Matching `t1.t2…tn` walks, for each token, the literal child named by the
//! token and the `*` child; on the way down it collects the `tail` lists (a
//! `>` needs at least one more token), and at depth `n` the `ending` list.
//! Only nodes whose path matches a prefix of the topic are visited, so the
//! cost of a match grows with the topic's depth and the number of matching
//! subscriptions, not with subscriptions on unrelated subjects (apart from
//! the `log(fanout)` of each binary search). The collected ids are sorted and
//! deduplicated, so a subscriber reached through several patterns appears
//! once.
//!
//! **Why a sorted `Vec` for literal children.** Memory per idle subscription
//! is the budget that matters (< 1 KB with a million subscriptions), and most
//! trie nodes have one or two children. A `BTreeMap` allocates a whole
//! 11-slot leaf even for a single child; a hash map carries table slack, and
//! `std`'s `HashMap` is banned by `clippy.toml` whatever its hasher. A sorted
//! `Vec` costs exactly one entry per child (we grow small vectors one slot at
//! a time while they are short) and a binary search is cheap at the fanouts
//! seen in practice. Empty nodes are pruned on removal, so subscribe /
//! unsubscribe churn leaves the trie as it found it.
//!
//! # Literal patterns beside the trie
//!
//! A pattern without wildcards matches exactly one topic, so it does not
//! need a path of nodes: literal patterns live in one ordered map, pattern
//! text → ids (the key is the subscriber's own `Pattern`, a shared string,
//! so the map adds no copy of it), and a match looks the topic up there
//! besides walking the trie, which holds wildcard patterns only. This is
//! what keeps a million subscriptions to distinct subjects (an inbox, a
//! device each) small: a trie leaf per subject costs a node (four
//! vectors), its token's allocation and its id list's allocation; a map
//! entry costs the pattern handle and one id, inline.
//!
//! # A bounded match cache
//!
//! Publish traffic is dominated by a few hot topics, so results are cached:
//! topic string → shared, sorted id list (`Arc<[T]>`, handed out by
//! reference count). The cache holds at most its capacity of topics.
//!
//! * **Eviction is CLOCK (second chance).** Entries sit in a ring of slots; a
//!   hit only sets the slot's `referenced` bit (no list splicing, as LRU
//!   would need), and on a miss with a full cache the hand sweeps the ring,
//!   clearing bits, until it finds an unreferenced entry. New entries start
//!   unreferenced, so a topic seen once is evicted before one that was
//!   re-read. Nothing is random, so eviction order is deterministic.
//! * **Invalidation is exact.** An insert or remove can change only the
//!   results of topics its pattern matches. All such topics start with the
//!   pattern's literal prefix (the tokens before its first wildcard), and the
//!   cache's keys are ordered, so the affected entries are found by a range
//!   scan over that prefix and only they are dropped. A subscribe / unsubscribe
//!   therefore costs `O(log cache + cached topics under the prefix)` and hot
//!   unrelated topics stay cached. Clearing the whole cache would be simpler,
//!   but under steady churn (the normal state of a broker with a million
//!   subscribers) the cache would almost always be empty. A pattern that
//!   starts with a wildcard (`>`, `*.x`) has no prefix and scans the whole
//!   cache, at most `capacity` calls to [`Pattern::matches`]; such firehose
//!   subscriptions are rare. A subscribe whose id is already in a cached
//!   result leaves that result alone: it cannot change.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::mem::size_of;
use std::ops::Bound;
use std::sync::Arc;

use crate::topic::{MAX_TOKENS, Pattern, Topic};

/// How many topics [`SubscriptionIndex::new`] caches.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// Vectors in the trie up to this length grow (and shrink) one slot at a
/// time. Most nodes hold one or two children or ids, and `Vec`'s minimum
/// capacity of 4 would otherwise quadruple them; longer vectors grow
/// geometrically so a hot node still takes inserts in amortised O(1).
const EXACT_GROWTH_LIMIT: usize = 8;

/// Makes room for one more element (see [`EXACT_GROWTH_LIMIT`]).
fn reserve_one<V>(v: &mut Vec<V>) {
    if v.len() == v.capacity() {
        if v.len() < EXACT_GROWTH_LIMIT { v.reserve_exact(1) } else { v.reserve(1) }
    }
}

/// Gives memory back after a removal: small vectors stay exact, large ones
/// shrink once three quarters are unused (the gap keeps an insert / remove
/// pair at the boundary from reallocating every time).
fn shrink_after_remove<V>(v: &mut Vec<V>) {
    let capacity = v.capacity();
    if v.len() < capacity && (capacity <= EXACT_GROWTH_LIMIT || v.len() <= capacity / 4) {
        v.shrink_to_fit();
    }
}

/// Inserts `id` into a sorted list; false if it was already there.
fn insert_sorted<T: Ord>(ids: &mut Vec<T>, id: T) -> bool {
    match ids.binary_search(&id) {
        Ok(_) => false,
        Err(at) => {
            reserve_one(ids);
            ids.insert(at, id);
            true
        }
    }
}

/// Removes `id` from a sorted list; false if it was not there.
fn remove_sorted<T: Ord>(ids: &mut Vec<T>, id: T) -> bool {
    match ids.binary_search(&id) {
        Ok(at) => {
            ids.remove(at);
            shrink_after_remove(ids);
            true
        }
        Err(_) => false,
    }
}

/// The tokens of a validated topic or pattern, split without allocating
/// (validation caps their number at [`MAX_TOKENS`]).
struct Tokens<'s> {
    buf: [&'s str; MAX_TOKENS],
    len: usize,
}

impl<'s> Tokens<'s> {
    fn of(s: &'s str) -> Self {
        let mut tokens = Tokens { buf: [""; MAX_TOKENS], len: 0 };
        for (slot, token) in tokens.buf.iter_mut().zip(s.split('.')) {
            *slot = token;
            tokens.len += 1;
        }
        debug_assert_eq!(tokens.len, s.split('.').count(), "topics and patterns are validated");
        tokens
    }

    fn as_slice(&self) -> &[&'s str] {
        &self.buf[..self.len]
    }
}

/// A node's literal children: a sorted `Vec` while few (most nodes have
/// one or two, and a `Vec` costs no more than it holds), a `BTreeMap` once
/// many (inserting beside a million siblings — `inbox.<user>` for every
/// user — must not shift them all). Switches at [`WIDE_AT`] children and
/// back at [`NARROW_AT`].
enum Literals<T> {
    Few(Vec<(Box<str>, Node<T>)>),
    Many(BTreeMap<Box<str>, Node<T>>),
}

const WIDE_AT: usize = 64;
const NARROW_AT: usize = 32;

impl<T: Copy + Ord> Literals<T> {
    fn len(&self) -> usize {
        match self {
            Literals::Few(v) => v.len(),
            Literals::Many(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, token: &str) -> Option<&Node<T>> {
        match self {
            Literals::Few(v) => v.binary_search_by(|(label, _)| (**label).cmp(token)).ok().map(|at| &v[at].1),
            Literals::Many(m) => m.get(token),
        }
    }

    fn get_mut(&mut self, token: &str) -> Option<&mut Node<T>> {
        match self {
            Literals::Few(v) => v.binary_search_by(|(label, _)| (**label).cmp(token)).ok().map(|at| &mut v[at].1),
            Literals::Many(m) => m.get_mut(token),
        }
    }

    fn get_or_insert(&mut self, token: &str, created: &mut usize) -> &mut Node<T> {
        if let Literals::Few(v) = self
            && v.len() >= WIDE_AT
            && v.binary_search_by(|(label, _)| (**label).cmp(token)).is_err()
        {
            *self = Literals::Many(std::mem::take(v).into_iter().collect());
        }
        match self {
            Literals::Few(v) => {
                let at = match v.binary_search_by(|(label, _)| (**label).cmp(token)) {
                    Ok(at) => at,
                    Err(at) => {
                        reserve_one(v);
                        v.insert(at, (token.into(), Node::new()));
                        *created += 1;
                        at
                    }
                };
                &mut v[at].1
            }
            Literals::Many(m) => {
                if !m.contains_key(token) {
                    *created += 1;
                }
                m.entry(token.into()).or_insert_with(Node::new)
            }
        }
    }

    /// Removes the (emptied) child `token`.
    fn remove(&mut self, token: &str) {
        match self {
            Literals::Few(v) => {
                if let Ok(at) = v.binary_search_by(|(label, _)| (**label).cmp(token)) {
                    v.remove(at);
                    shrink_after_remove(v);
                }
            }
            Literals::Many(m) => {
                m.remove(token);
                if m.len() <= NARROW_AT {
                    *self = Literals::Few(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    /// Heap bytes of the container itself (children counted separately).
    fn own_heap_bytes(&self) -> usize {
        let entry = size_of::<(Box<str>, Node<T>)>();
        match self {
            Literals::Few(v) => v.capacity() * entry,
            // B-tree nodes hold up to 11 entries; count them about half full.
            Literals::Many(m) => m.len() * entry * 2,
        }
    }
}

impl<T> Literals<T> {
    fn iter(&self) -> LiteralsIter<'_, T> {
        match self {
            Literals::Few(v) => LiteralsIter::Few(v.iter()),
            Literals::Many(m) => LiteralsIter::Many(m.iter()),
        }
    }
}

/// Iterates literal children in token order.
enum LiteralsIter<'a, T> {
    Few(std::slice::Iter<'a, (Box<str>, Node<T>)>),
    Many(std::collections::btree_map::Iter<'a, Box<str>, Node<T>>),
}

impl<'a, T> Iterator for LiteralsIter<'a, T> {
    type Item = (&'a str, &'a Node<T>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            LiteralsIter::Few(i) => i.next().map(|(label, node)| (&**label, node)),
            LiteralsIter::Many(i) => i.next().map(|(label, node)| (&**label, node)),
        }
    }
}

/// The ids of one literal pattern: most patterns have one subscriber, kept
/// inline; more go to a sorted vector.
enum Ids<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Ids<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(v) => v,
        }
    }
}

impl<T: Copy + Ord> Ids<T> {
    /// Adds `id`; false if it was there.
    fn insert(&mut self, id: T) -> bool {
        match self {
            Ids::One(one) if *one == id => false,
            Ids::One(one) => {
                let mut v = vec![*one, id];
                v.sort_unstable();
                *self = Ids::Many(v);
                true
            }
            Ids::Many(v) => insert_sorted(v, id),
        }
    }

    /// Removes `id`; `None` if it was not there, `Some(empty)` after.
    fn remove(&mut self, id: T) -> Option<bool> {
        match self {
            Ids::One(one) => (*one == id).then_some(true),
            Ids::Many(v) => {
                if !remove_sorted(v, id) {
                    return None;
                }
                if let [last] = v.as_slice() {
                    *self = Ids::One(*last);
                }
                Some(false)
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Ids::One(_) => 0,
            Ids::Many(v) => v.capacity() * size_of::<T>(),
        }
    }
}

/// One trie node; see the module docs.
struct Node<T> {
    /// Literal children, in token order.
    literals: Literals<T>,
    /// The `*` child.
    star: Option<Box<Node<T>>>,
    /// Ids whose pattern ends here, sorted.
    ending: Vec<T>,
    /// Ids subscribed to this node's path followed by `>`, sorted.
    tail: Vec<T>,
}

impl<T: Copy + Ord> Node<T> {
    const fn new() -> Self {
        Node { literals: Literals::Few(Vec::new()), star: None, ending: Vec::new(), tail: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.star.is_none() && self.ending.is_empty() && self.tail.is_empty()
    }

    fn literal(&self, token: &str) -> Option<&Node<T>> {
        self.literals.get(token)
    }

    /// The literal child `token`, created if missing (counted in `created`).
    fn literal_or_insert(&mut self, token: &str, created: &mut usize) -> &mut Node<T> {
        self.literals.get_or_insert(token, created)
    }

    /// The node a pattern's tokens lead to, and whether it ends with `>`
    /// (then the id lives in that node's `tail`, else in its `ending`).
    fn find(&self, tokens: &[&str]) -> Option<(&Node<T>, bool)> {
        let mut node = self;
        for &token in tokens {
            node = match token {
                ">" => return Some((node, true)),
                "*" => node.star.as_deref()?,
                literal => node.literal(literal)?,
            };
        }
        Some((node, false))
    }

    /// Removes `id` from the list `tokens` lead to, then prunes children the
    /// removal left empty (counted in `pruned`). False if it was not there.
    fn remove(&mut self, tokens: &[&str], id: T, pruned: &mut usize) -> bool {
        let Some((&token, rest)) = tokens.split_first() else {
            return remove_sorted(&mut self.ending, id);
        };
        match token {
            ">" => remove_sorted(&mut self.tail, id),
            "*" => {
                let Some(star) = self.star.as_deref_mut() else { return false };
                let removed = star.remove(rest, id, pruned);
                if removed && star.is_empty() {
                    self.star = None;
                    *pruned += 1;
                }
                removed
            }
            literal => {
                let Some(child) = self.literals.get_mut(literal) else { return false };
                let removed = child.remove(rest, id, pruned);
                if removed && child.is_empty() {
                    self.literals.remove(literal);
                    *pruned += 1;
                }
                removed
            }
        }
    }

    /// Appends the ids of every pattern below this node that matches the
    /// remaining topic `tokens`.
    fn collect(&self, tokens: &[&str], found: &mut Collected<T>) {
        found.visited += 1;
        let Some((&token, rest)) = tokens.split_first() else {
            found.take(&self.ending);
            return;
        };
        // `>` here matches the remaining (one or more) tokens.
        found.take(&self.tail);
        if let Some(child) = self.literal(token) {
            child.collect(rest, found);
        }
        if let Some(star) = self.star.as_deref() {
            star.collect(rest, found);
        }
    }

    /// Heap bytes owned by this node (not counting the node itself).
    fn heap_bytes(&self) -> usize {
        let own = self.literals.own_heap_bytes() + (self.ending.capacity() + self.tail.capacity()) * size_of::<T>();
        let literals: usize = self.literals.iter().map(|(label, child)| label.len() + child.heap_bytes()).sum();
        let star = self.star.as_deref().map_or(0, |star| size_of::<Node<T>>() + star.heap_bytes());
        own + literals + star
    }
}

/// The ids gathered by one match.
struct Collected<T> {
    ids: Vec<T>,
    /// Non-empty lists appended: with one, `ids` is already sorted and unique.
    lists: usize,
    /// Trie nodes visited (what a match costs).
    visited: usize,
}

impl<T: Copy + Ord> Collected<T> {
    fn take(&mut self, ids: &[T]) {
        if !ids.is_empty() {
            self.ids.extend_from_slice(ids);
            self.lists += 1;
        }
    }

    fn into_sorted(mut self) -> Vec<T> {
        if self.lists > 1 {
            self.ids.sort_unstable();
            self.ids.dedup();
        }
        self.ids
    }
}

/// Counters of the match cache, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that walked the trie.
    pub misses: u64,
    /// Entries dropped to make room (CLOCK eviction).
    pub evictions: u64,
    /// Entries dropped because a subscribe or unsubscribe changed them.
    pub invalidations: u64,
    /// Entries cached now.
    pub entries: usize,
}

/// A cached topic, ordered as its string so that the cache can be looked up
/// and range-scanned by `&str`.
struct CacheKey(Topic);

impl Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for CacheKey {}

impl PartialOrd for CacheKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CacheKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

/// One cached result, in the CLOCK ring.
struct CacheSlot<T> {
    topic: Topic,
    ids: Arc<[T]>,
    /// Read since the hand last passed: spared once.
    referenced: bool,
}

/// The bounded topic → ids cache; see the module docs.
struct MatchCache<T> {
    capacity: usize,
    /// Topic → its slot in `slots`.
    index: BTreeMap<CacheKey, usize>,
    /// The CLOCK ring; `None` for slots freed by invalidation.
    slots: Vec<Option<CacheSlot<T>>>,
    /// Slots freed by invalidation, reused before evicting anything.
    free: Vec<usize>,
    /// The CLOCK hand: the next slot considered for eviction.
    hand: usize,
    stats: CacheStats,
}

impl<T: Copy + Ord> MatchCache<T> {
    fn new(capacity: usize) -> Self {
        MatchCache {
            capacity,
            index: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            stats: CacheStats::default(),
        }
    }

    fn get(&mut self, topic: &str) -> Option<Arc<[T]>> {
        let &slot = self.index.get(topic)?;
        let entry = self.slots[slot].as_mut().expect("indexed slots are occupied");
        entry.referenced = true;
        Some(Arc::clone(&entry.ids))
    }

    fn put(&mut self, topic: &Topic, ids: Arc<[T]>) {
        if self.capacity == 0 {
            return;
        }
        let slot = if let Some(slot) = self.free.pop() {
            slot
        } else if self.slots.len() < self.capacity {
            self.slots.push(None);
            self.slots.len() - 1
        } else {
            self.evict()
        };
        self.index.insert(CacheKey(topic.clone()), slot);
        self.slots[slot] = Some(CacheSlot { topic: topic.clone(), ids, referenced: false });
    }

    /// Sweeps the hand to an unreferenced entry, drops it and returns its
    /// slot. Called only when the ring is full and nothing is free, so every
    /// slot is occupied and the sweep ends within two turns.
    fn evict(&mut self) -> usize {
        loop {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let entry = self.slots[slot].as_mut().expect("a full ring has no free slots");
            if entry.referenced {
                entry.referenced = false;
            } else {
                self.index.remove(entry.topic.as_str());
                self.slots[slot] = None;
                self.stats.evictions += 1;
                return slot;
            }
        }
    }

    /// Drops the cached results `pattern` matches. With `added` (a
    /// subscribe of that id), results already holding the id are kept:
    /// they cannot change.
    fn invalidate(&mut self, pattern: &Pattern, added: Option<T>) {
        if self.index.is_empty() {
            return;
        }
        let unchanged = |slot: &usize| {
            let entry = self.slots[*slot].as_ref().expect("indexed slots are occupied");
            added.is_some_and(|id| entry.ids.binary_search(&id).is_ok())
        };
        let text = pattern.as_str();
        let prefix = &text[..literal_prefix_len(text)];
        let doomed: Vec<usize> = if prefix.len() == text.len() {
            // A literal pattern matches exactly one topic: itself.
            self.index.get(text).filter(|slot| !unchanged(slot)).into_iter().copied().collect()
        } else {
            self.index
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(topic, _)| topic.0.as_str().starts_with(prefix))
                .filter(|(topic, slot)| pattern.matches(&topic.0) && !unchanged(slot))
                .map(|(_, &slot)| slot)
                .collect()
        };
        for slot in doomed {
            let entry = self.slots[slot].take().expect("indexed slots are occupied");
            self.index.remove(entry.topic.as_str());
            self.free.push(slot);
            self.stats.invalidations += 1;
        }
    }

    fn stats(&self) -> CacheStats {
        CacheStats { entries: self.index.len(), ..self.stats }
    }

    /// Rough heap bytes: the ring, the free list, the ordered map (entries
    /// plus about half again for partly filled B-tree nodes), each result
    /// list and each topic string (shared with the publisher, counted anyway).
    fn heap_bytes(&self) -> usize {
        let ring =
            self.slots.capacity() * size_of::<Option<CacheSlot<T>>>() + self.free.capacity() * size_of::<usize>();
        let map = self.index.len() * size_of::<(CacheKey, usize)>() * 3 / 2;
        let entries: usize = self
            .slots
            .iter()
            .flatten()
            .map(|entry| 2 * size_of::<usize>() + entry.ids.len() * size_of::<T>() + entry.topic.as_str().len())
            .sum();
        ring + map + entries
    }
}

/// Byte length of the pattern's literal prefix: everything before its first
/// wildcard token (the whole pattern if it has none). Every topic the pattern
/// matches starts with this prefix.
fn literal_prefix_len(pattern: &str) -> usize {
    let mut offset = 0;
    for token in pattern.split('.') {
        if token == "*" || token == ">" {
            return offset;
        }
        offset += token.len() + 1;
    }
    pattern.len()
}

/// The routing index: subscriber ids by pattern, answering "who receives a
/// message published on this topic?". See the [module docs](self) for the
/// trie, the cache and their trade-offs.
///
/// `T` is the subscriber id: small and `Copy` (a connection or session
/// number), ordered so that results come out sorted and deduplicated.
///
/// # Example
///
/// ```
/// use kaelix_broker::subscription::SubscriptionIndex;
/// use kaelix_broker::topic::{Pattern, Topic};
///
/// let pattern = |s: &str| Pattern::new(s).unwrap();
/// let mut index = SubscriptionIndex::<u32>::new();
/// index.insert(&pattern("orders.*.created"), 1);
/// index.insert(&pattern("orders.>"), 2);
/// index.insert(&pattern("orders.eu.created"), 2); // 2 twice: delivered once
/// index.insert(&pattern("payments.>"), 3);
///
/// let topic = Topic::new("orders.eu.created").unwrap();
/// assert_eq!(&*index.matches(&topic), &[1, 2]);
/// assert_eq!(&*index.matches(&topic), &[1, 2]); // from the cache
/// assert_eq!(index.cache_stats().hits, 1);
///
/// index.remove(&pattern("orders.*.created"), 1);
/// assert_eq!(&*index.matches(&topic), &[2]); // the cached result was dropped
/// assert_eq!(index.len(), 3);
/// ```
pub struct SubscriptionIndex<T> {
    root: Node<T>,
    /// Literal patterns (see the module docs): pattern text → ids.
    exact: BTreeMap<Pattern, Ids<T>>,
    /// (pattern, id) pairs held.
    subscriptions: usize,
    /// Trie nodes, the root included.
    nodes: usize,
    cache: MatchCache<T>,
    /// Shared by every empty result, so unmatched topics allocate nothing.
    empty: Arc<[T]>,
}

impl<T: Copy + Ord + fmt::Debug> SubscriptionIndex<T> {
    /// An empty index caching up to [`DEFAULT_CACHE_CAPACITY`] topics.
    pub fn new() -> Self {
        Self::with_cache_capacity(DEFAULT_CACHE_CAPACITY)
    }

    /// An empty index caching up to `capacity` topics (0 disables the cache).
    pub fn with_cache_capacity(capacity: usize) -> Self {
        SubscriptionIndex {
            root: Node::new(),
            exact: BTreeMap::new(),
            subscriptions: 0,
            nodes: 1,
            cache: MatchCache::new(capacity),
            empty: Arc::from(Vec::new()),
        }
    }

    /// Subscribes `id` to `pattern`. Idempotent: false if the pair was
    /// already there (nothing changes).
    pub fn insert(&mut self, pattern: &Pattern, id: T) -> bool {
        if pattern.is_literal() {
            let inserted = match self.exact.get_mut(pattern.as_str()) {
                Some(ids) => ids.insert(id),
                None => {
                    self.exact.insert(pattern.clone(), Ids::One(id));
                    true
                }
            };
            if inserted {
                self.subscriptions += 1;
                self.cache.invalidate(pattern, Some(id));
            }
            return inserted;
        }
        let mut created = 0;
        let mut node = &mut self.root;
        for token in pattern.tokens() {
            node = match token {
                ">" => break,
                "*" => node.star.get_or_insert_with(|| {
                    created += 1;
                    Box::new(Node::new())
                }),
                literal => node.literal_or_insert(literal, &mut created),
            };
        }
        // `>` is always the last token, and only ever a whole token.
        let ids = if pattern.as_str().ends_with('>') { &mut node.tail } else { &mut node.ending };
        let inserted = insert_sorted(ids, id);
        self.nodes += created;
        if inserted {
            self.subscriptions += 1;
            self.cache.invalidate(pattern, Some(id));
        }
        inserted
    }

    /// Unsubscribes `id` from `pattern`, pruning trie nodes left empty.
    /// False if the pair was not there.
    pub fn remove(&mut self, pattern: &Pattern, id: T) -> bool {
        let removed = if pattern.is_literal() {
            match self.exact.get_mut(pattern.as_str()).and_then(|ids| ids.remove(id)) {
                None => false,
                Some(emptied) => {
                    if emptied {
                        self.exact.remove(pattern.as_str());
                    }
                    true
                }
            }
        } else {
            self.remove_from_trie(pattern, id)
        };
        if removed {
            self.subscriptions -= 1;
            self.cache.invalidate(pattern, None);
        }
        removed
    }

    fn remove_from_trie(&mut self, pattern: &Pattern, id: T) -> bool {
        let tokens = Tokens::of(pattern.as_str());
        let mut pruned = 0;
        let removed = self.root.remove(tokens.as_slice(), id, &mut pruned);
        self.nodes -= pruned;
        removed
    }

    /// Whether `id` is subscribed to exactly `pattern`.
    pub fn contains(&self, pattern: &Pattern, id: T) -> bool {
        if pattern.is_literal() {
            return self.exact.get(pattern.as_str()).is_some_and(|ids| ids.as_slice().binary_search(&id).is_ok());
        }
        let tokens = Tokens::of(pattern.as_str());
        self.root.find(tokens.as_slice()).is_some_and(|(node, tail)| {
            let ids = if tail { &node.tail } else { &node.ending };
            ids.binary_search(&id).is_ok()
        })
    }

    /// The ids subscribed to a pattern matching `topic`: sorted, each once.
    /// Served from the cache when possible; a miss walks the trie and
    /// caches the result.
    pub fn matches(&mut self, topic: &Topic) -> Arc<[T]> {
        if let Some(ids) = self.cache.get(topic.as_str()) {
            self.cache.stats.hits += 1;
            return ids;
        }
        self.cache.stats.misses += 1;
        let found = self.matches_uncached(topic);
        let ids = if found.is_empty() { Arc::clone(&self.empty) } else { Arc::from(found) };
        self.cache.put(topic, Arc::clone(&ids));
        ids
    }

    /// Like [`matches`](Self::matches), but always walks the trie and leaves
    /// the cache alone.
    pub fn matches_uncached(&self, topic: &Topic) -> Vec<T> {
        self.collect(topic).into_sorted()
    }

    fn collect(&self, topic: &Topic) -> Collected<T> {
        let tokens = Tokens::of(topic.as_str());
        let mut found = Collected { ids: Vec::new(), lists: 0, visited: 0 };
        if let Some(ids) = self.exact.get(topic.as_str()) {
            found.take(ids.as_slice());
        }
        self.root.collect(tokens.as_slice(), &mut found);
        found
    }

    /// Number of (pattern, id) subscriptions.
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Number of trie nodes, the root included (1 when empty; literal
    /// patterns take none). Churn that ends where it started leaves this
    /// unchanged.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// Every pattern with its sorted subscriber ids: the literal patterns
    /// in text order, then the wildcard patterns in trie order
    /// (deterministic). Wildcard patterns are rebuilt from the trie path, one
    /// small allocation each; meant for diagnostics and snapshots, not the
    /// hot path.
    pub fn patterns(&self) -> Patterns<'_, T> {
        let mut patterns =
            Patterns { exact: self.exact.iter(), frames: Vec::new(), path: String::new(), ready: Vec::new() };
        patterns.enter(&self.root);
        patterns
    }

    /// The match cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// How many topics the match cache holds at most.
    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity
    }

    /// A rough count of heap bytes held by the trie and the cache, for
    /// benchmarks (walks the whole trie; ignores allocator rounding).
    pub fn approx_heap_bytes(&self) -> usize {
        // B-tree nodes hold up to 11 entries; count them about two thirds full.
        let exact = self.exact.len() * size_of::<(Pattern, Ids<T>)>() * 3 / 2
            + self.exact.values().map(Ids::heap_bytes).sum::<usize>();
        self.root.heap_bytes() + exact + self.cache.heap_bytes()
    }
}

impl<T: Copy + Ord + fmt::Debug> Default for SubscriptionIndex<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Ord + fmt::Debug> fmt::Debug for SubscriptionIndex<T> {
    /// A summary: the contents can be millions of entries (see [`SubscriptionIndex::patterns`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.subscriptions)
            .field("nodes", &self.nodes)
            .field("cache_capacity", &self.cache.capacity)
            .field("cache", &self.cache.stats())
            .finish()
    }
}

/// Iterator over an index's patterns and their subscriber ids; see
/// [`SubscriptionIndex::patterns`].
pub struct Patterns<'a, T> {
    /// The literal patterns, listed first.
    exact: std::collections::btree_map::Iter<'a, Pattern, Ids<T>>,
    /// The depth-first walk: one frame per node on the current path.
    frames: Vec<Frame<'a, T>>,
    /// The current node's path, as pattern text.
    path: String,
    /// Items of the last node entered, last one first (at most two).
    ready: Vec<(Pattern, &'a [T])>,
}

/// A node on the walk's path, with the children still to visit.
struct Frame<'a, T> {
    literals: LiteralsIter<'a, T>,
    star: Option<&'a Node<T>>,
    /// Length of `path` at this node.
    path_len: usize,
}

/// A path of tokens that came from valid patterns is a valid pattern.
fn rebuilt(text: &str) -> Pattern {
    Pattern::new(text).expect("a trie path is made of a valid pattern's tokens")
}

impl<'a, T> Patterns<'a, T> {
    /// Queues the node's patterns (`path` is already its path) and pushes
    /// its frame.
    fn enter(&mut self, node: &'a Node<T>) {
        // `ready` pops from the back: the tail pattern goes in first so the
        // ending pattern comes out first.
        if !node.tail.is_empty() {
            let text = if self.path.is_empty() { ">".to_owned() } else { format!("{}.>", self.path) };
            self.ready.push((rebuilt(&text), &node.tail));
        }
        if !node.ending.is_empty() {
            self.ready.push((rebuilt(&self.path), &node.ending));
        }
        self.frames.push(Frame {
            literals: node.literals.iter(),
            star: node.star.as_deref(),
            path_len: self.path.len(),
        });
    }
}

impl<'a, T> Iterator for Patterns<'a, T> {
    type Item = (Pattern, &'a [T]);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((pattern, ids)) = self.exact.next() {
            return Some((pattern.clone(), ids.as_slice()));
        }
        loop {
            if let Some(item) = self.ready.pop() {
                return Some(item);
            }
            let frame = self.frames.last_mut()?;
            let path_len = frame.path_len;
            let (token, child) = if let Some((token, child)) = frame.literals.next() {
                (token, child)
            } else if let Some(star) = frame.star.take() {
                ("*", star)
            } else {
                self.frames.pop();
                continue;
            };
            self.path.truncate(path_len);
            if !self.path.is_empty() {
                self.path.push('.');
            }
            self.path.push_str(token);
            self.enter(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn pattern(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    /// An index with the given (pattern, id) subscriptions.
    fn index_of(subscriptions: &[(&str, u32)]) -> SubscriptionIndex<u32> {
        let mut index = SubscriptionIndex::new();
        for &(p, id) in subscriptions {
            index.insert(&pattern(p), id);
        }
        index
    }

    fn matched(index: &mut SubscriptionIndex<u32>, t: &str) -> Vec<u32> {
        index.matches(&topic(t)).to_vec()
    }

    #[test]
    fn literal_patterns_match_only_their_topic() {
        let mut index = index_of(&[("orders.eu.created", 1), ("orders.eu", 2), ("orders", 3)]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [1]);
        assert_eq!(matched(&mut index, "orders.eu"), [2]);
        assert_eq!(matched(&mut index, "orders"), [3]);
        assert_eq!(matched(&mut index, "orders.us"), [0u32; 0]);
        assert_eq!(matched(&mut index, "orders.eu.created.late"), [0u32; 0]);
    }

    #[test]
    fn star_matches_exactly_one_token() {
        let mut index = index_of(&[("orders.*.created", 1), ("*", 2), ("*.*", 3)]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [1]);
        assert_eq!(matched(&mut index, "orders.us.created"), [1]);
        assert_eq!(matched(&mut index, "orders.eu.west.created"), [0u32; 0]);
        assert_eq!(matched(&mut index, "orders"), [2]);
        assert_eq!(matched(&mut index, "orders.eu"), [3]);
    }

    #[test]
    fn tail_matches_one_or_more_trailing_tokens() {
        let mut index = index_of(&[("orders.>", 1), (">", 2), ("orders.*.>", 3)]);
        assert_eq!(matched(&mut index, "orders"), [2], "`orders.>` needs at least one more token");
        assert_eq!(matched(&mut index, "orders.eu"), [1, 2]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [1, 2, 3]);
        assert_eq!(matched(&mut index, "payments.eu.created"), [2]);
    }

    #[test]
    fn overlapping_patterns_reach_each_subscriber_once() {
        let mut index = index_of(&[
            ("orders.eu.created", 7),
            ("orders.*.created", 7),
            ("orders.>", 7),
            ("*.eu.*", 7),
            ("orders.eu.created", 3),
            (">", 5),
            ("orders.us.created", 1),
        ]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [3, 5, 7]);
        assert_eq!(index.matches_uncached(&topic("orders.eu.created")), [3, 5, 7]);
        assert_eq!(matched(&mut index, "orders.us.created"), [1, 5, 7]);
    }

    #[test]
    fn insert_is_idempotent_and_remove_reports_absence() {
        let mut index = SubscriptionIndex::new();
        assert!(index.is_empty());
        assert!(index.insert(&pattern("a.*"), 1));
        assert!(!index.insert(&pattern("a.*"), 1), "the same pair twice is one subscription");
        assert!(index.insert(&pattern("a.*"), 2));
        assert!(index.insert(&pattern("a.>"), 1));
        assert_eq!(index.len(), 3);
        assert!(index.contains(&pattern("a.*"), 1));
        assert!(!index.contains(&pattern("a.b"), 1));
        assert!(!index.remove(&pattern("a.b"), 1), "never subscribed");
        assert!(!index.remove(&pattern("a.*"), 3), "pattern known, id not");
        assert!(index.remove(&pattern("a.*"), 1));
        assert!(!index.remove(&pattern("a.*"), 1));
        assert_eq!(index.len(), 2);
        assert_eq!(matched(&mut index, "a.x"), [1, 2]);
    }

    #[test]
    fn patterns_lists_every_subscription() {
        let subscriptions = [("orders.>", 1), ("orders.*.created", 2), ("orders", 3), ("orders", 4), (">", 5)];
        let index = index_of(&subscriptions);
        let listed: BTreeSet<(String, u32)> =
            index.patterns().flat_map(|(p, ids)| ids.iter().map(move |&id| (p.as_str().to_owned(), id))).collect();
        let expected: BTreeSet<(String, u32)> = subscriptions.iter().map(|&(p, id)| (p.to_owned(), id)).collect();
        assert_eq!(listed, expected);
        assert_eq!(index.patterns().count(), 4, "one item per pattern, ids grouped");
    }

    #[test]
    fn a_subscribe_after_a_cached_miss_is_seen() {
        let mut index = index_of(&[("payments.>", 1)]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [0u32; 0]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [0u32; 0]);
        assert_eq!(index.cache_stats().hits, 1, "the miss was cached");
        index.insert(&pattern("orders.*.created"), 2);
        assert_eq!(matched(&mut index, "orders.eu.created"), [2]);
        index.insert(&pattern(">"), 3);
        assert_eq!(matched(&mut index, "orders.eu.created"), [2, 3]);
    }

    #[test]
    fn an_unsubscribe_disappears_from_cached_results() {
        let mut index = index_of(&[("orders.eu.created", 1), ("orders.>", 2), ("*.eu.*", 3)]);
        assert_eq!(matched(&mut index, "orders.eu.created"), [1, 2, 3]);
        index.remove(&pattern("orders.>"), 2);
        assert_eq!(matched(&mut index, "orders.eu.created"), [1, 3]);
        index.remove(&pattern("*.eu.*"), 3);
        assert_eq!(matched(&mut index, "orders.eu.created"), [1]);
        index.remove(&pattern("orders.eu.created"), 1);
        assert_eq!(matched(&mut index, "orders.eu.created"), [0u32; 0]);
    }

    #[test]
    fn invalidation_spares_unaffected_topics() {
        let mut index = index_of(&[("orders.>", 1), ("payments.>", 2)]);
        for t in ["orders.eu", "orders-old.eu", "orders0.eu", "payments.eu"] {
            index.matches(&topic(t));
        }
        index.insert(&pattern("orders.*"), 3);
        let stats = index.cache_stats();
        assert_eq!((stats.invalidations, stats.entries), (1, 3), "only orders.eu matches `orders.*`");
        index.insert(&pattern(">"), 2);
        assert_eq!(index.cache_stats().invalidations, 3, "payments.eu already held 2; the other two did not");
        index.insert(&pattern("payments.>"), 4);
        assert_eq!(index.cache_stats().invalidations, 4);
        assert_eq!(matched(&mut index, "payments.eu"), [2, 4]);
        assert_eq!(matched(&mut index, "orders0.eu"), [2]);
        // A subscribe of an id the cached result already holds changes nothing.
        index.matches(&topic("orders.eu"));
        let before = index.cache_stats();
        index.insert(&pattern("orders.eu"), 1);
        assert_eq!(index.cache_stats().invalidations, before.invalidations);
        assert_eq!(matched(&mut index, "orders.eu"), [1, 2, 3]);
    }

    #[test]
    fn the_cache_stays_within_capacity_and_keeps_reread_topics() {
        let mut index: SubscriptionIndex<u32> = SubscriptionIndex::with_cache_capacity(2);
        index.insert(&pattern(">"), 1);
        index.matches(&topic("hot"));
        index.matches(&topic("cold"));
        index.matches(&topic("hot")); // referenced: spared by the next sweep
        index.matches(&topic("new")); // evicts `cold`
        let stats = index.cache_stats();
        assert_eq!((stats.entries, stats.evictions, stats.hits), (2, 1, 1));
        index.matches(&topic("hot"));
        assert_eq!(index.cache_stats().hits, 2, "the re-read topic survived");
        for i in 0..100 {
            index.matches(&topic(&format!("t{i}")));
            assert!(index.cache_stats().entries <= 2);
        }
    }

    #[test]
    fn a_zero_capacity_cache_caches_nothing() {
        let mut index = SubscriptionIndex::with_cache_capacity(0);
        index.insert(&pattern("a"), 1);
        assert_eq!(matched(&mut index, "a"), [1]);
        assert_eq!(matched(&mut index, "a"), [1]);
        let stats = index.cache_stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (0, 2, 0));
    }

    #[test]
    fn wide_nodes_switch_to_a_map_and_back_without_changing_answers() {
        let mut index = SubscriptionIndex::new();
        // Wildcard patterns: literal ones live beside the trie.
        let users: Vec<Pattern> = (0..300).map(|u| Pattern::new(format!("inbox.user{u}.>")).unwrap()).collect();
        for (id, p) in users.iter().enumerate() {
            assert!(index.insert(p, id as u32));
        }
        index.insert(&Pattern::new("inbox.*.msg").unwrap(), 1000);
        for u in [0usize, 150, 299] {
            let t = Topic::new(format!("inbox.user{u}.msg")).unwrap();
            assert_eq!(&*index.matches(&t), &[u as u32, 1000]);
        }
        let listed: Vec<String> = index.patterns().map(|(p, _)| p.as_str().to_owned()).collect();
        assert_eq!(listed.len(), 301);
        assert_eq!(listed.last().map(String::as_str), Some("inbox.*.msg"), "the * child after the literals");
        assert!(listed[..300].is_sorted(), "literals in token order in the map form too");
        for (id, p) in users.iter().enumerate() {
            assert!(index.remove(p, id as u32));
        }
        assert_eq!(&*index.matches(&Topic::new("inbox.user7.msg").unwrap()), &[1000]);
        assert!(index.remove(&Pattern::new("inbox.*.msg").unwrap(), 1000));
        assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn literal_patterns_live_beside_the_trie_and_share_ids_with_it() {
        let mut index = index_of(&[("a.b", 1), ("a.b", 2), ("a.*", 3), ("a.b.c", 4)]);
        assert_eq!(index.node_count(), 1 + 2, "only `a.*` made nodes");
        assert_eq!(matched(&mut index, "a.b"), [1, 2, 3]);
        assert!(index.insert(&pattern("a.b"), 3), "3 through a second pattern");
        assert!(!index.insert(&pattern("a.b"), 3), "idempotent");
        assert_eq!(matched(&mut index, "a.b"), [1, 2, 3], "delivered once");
        assert!(index.contains(&pattern("a.b"), 2) && !index.contains(&pattern("a.b"), 4));
        assert_eq!(index.len(), 5);
        for (p, id) in [("a.b", 1), ("a.b", 2), ("a.b", 3)] {
            assert!(index.remove(&pattern(p), id));
        }
        assert!(!index.remove(&pattern("a.b"), 3), "once");
        assert_eq!(matched(&mut index, "a.b"), [3], "through `a.*` still");
        assert_eq!(matched(&mut index, "a.b.c"), [4]);
        let heap = index.approx_heap_bytes();
        index.remove(&pattern("a.b.c"), 4);
        assert!(index.approx_heap_bytes() < heap);
    }

    #[test]
    fn churn_returns_the_trie_to_its_baseline() {
        let mut index = index_of(&[("orders.>", 1), ("orders.eu.created", 2)]);
        assert_eq!(index.node_count(), 1 + 1, "the literal pattern takes no node");
        let (nodes, heap) = (index.node_count(), index.approx_heap_bytes());
        for round in 0..3u32 {
            let churn: Vec<Pattern> =
                (0..2000).map(|i| pattern(&format!("tenant{}.{}.*.events.>", i % 17, i))).collect();
            for (i, p) in churn.iter().enumerate() {
                index.insert(p, round * 10_000 + i as u32);
                index.insert(&pattern("orders.*"), i as u32);
            }
            assert!(index.node_count() > nodes + 2000);
            for (i, p) in churn.iter().enumerate() {
                assert!(index.remove(p, round * 10_000 + i as u32));
                assert!(index.remove(&pattern("orders.*"), i as u32));
            }
            assert_eq!(index.node_count(), nodes, "round {round}");
            assert_eq!(index.len(), 2);
            assert!(index.approx_heap_bytes() <= heap + 64, "round {round}: {} > {heap}", index.approx_heap_bytes());
        }
        index.remove(&pattern("orders.>"), 1);
        index.remove(&pattern("orders.eu.created"), 2);
        assert_eq!(index.node_count(), 1);
        assert_eq!(index.approx_heap_bytes(), 0);
    }

    #[test]
    fn matching_does_not_visit_unrelated_subjects() {
        let relevant = [("orders.eu.created", 1), ("orders.*.created", 2), ("orders.>", 3)];
        let small = index_of(&relevant);
        let mut large = index_of(&relevant);
        for i in 0..5000u32 {
            large.insert(&pattern(&format!("orders.r{i}.created")), i);
            large.insert(&pattern(&format!("s{i}.*.>")), i);
        }
        let t = topic("orders.eu.created");
        assert_eq!(small.collect(&t).visited, large.collect(&t).visited);
        assert_eq!(large.matches_uncached(&t), [1, 2, 3]);
    }

    #[test]
    fn idle_subscriptions_stay_small() {
        let mut index: SubscriptionIndex<u64> = SubscriptionIndex::new();
        let n = 20_000u64;
        for i in 0..n {
            index.insert(&pattern(&format!("tenant{}.device{i}.telemetry.>", i % 100)), i);
        }
        let per_subscription = index.approx_heap_bytes() / n as usize;
        assert!(per_subscription < 512, "{per_subscription} bytes per subscription");
    }

    /// One step of the model-based test.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u8),
        Remove(String, u8),
        Match(String),
    }

    /// Patterns over {a, b, c, *} of depth 1-4, maybe ending in `>`: small
    /// enough that matches and overlaps are frequent.
    fn pattern_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![Just("a"), Just("b"), Just("c"), Just("*")];
        (proptest::collection::vec(token, 0..=4), any::<bool>()).prop_map(|(mut tokens, tail)| {
            if tail || tokens.is_empty() {
                tokens.push(">");
            }
            tokens.join(".")
        })
    }

    fn topic_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![Just("a"), Just("b"), Just("c")];
        proptest::collection::vec(token, 1..=4).prop_map(|tokens| tokens.join("."))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (pattern_text(), 0u8..4).prop_map(|(p, id)| Op::Insert(p, id)),
            2 => (pattern_text(), 0u8..4).prop_map(|(p, id)| Op::Remove(p, id)),
            4 => topic_text().prop_map(Op::Match),
        ]
    }

    /// The reference: every subscription checked with `Pattern::matches`.
    fn naive_matches(model: &BTreeSet<(String, u8)>, t: &Topic) -> Vec<u8> {
        let ids: BTreeSet<u8> = model.iter().filter(|(p, _)| pattern(p).matches(t)).map(|&(_, id)| id).collect();
        ids.into_iter().collect()
    }

    proptest! {
        /// With inserts and removes interleaved, the cached and uncached
        /// answers always equal the naive matcher's, and removing everything
        /// leaves an empty trie.
        #[test]
        fn matches_agree_with_the_naive_matcher(ops in proptest::collection::vec(op(), 1..150), capacity in 0usize..6) {
            let mut index: SubscriptionIndex<u8> = SubscriptionIndex::with_cache_capacity(capacity);
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(p, id) => {
                        prop_assert_eq!(index.insert(&pattern(&p), id), model.insert((p, id)));
                    }
                    Op::Remove(p, id) => {
                        prop_assert_eq!(index.remove(&pattern(&p), id), model.remove(&(p, id)));
                    }
                    Op::Match(t) => {
                        let t = topic(&t);
                        let expected = naive_matches(&model, &t);
                        prop_assert_eq!(&*index.matches(&t), expected.as_slice(), "cached, topic {}", t);
                        prop_assert_eq!(index.matches_uncached(&t), expected, "uncached, topic {}", t);
                    }
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert!(index.cache_stats().entries <= capacity);
            }
            let listed: BTreeSet<(String, u8)> = index
                .patterns()
                .flat_map(|(p, ids)| ids.iter().map(move |&id| (p.as_str().to_owned(), id)))
                .collect();
            prop_assert_eq!(&listed, &model);
            for (p, id) in model {
                prop_assert!(index.remove(&pattern(&p), id));
            }
            prop_assert_eq!(index.node_count(), 1);
            prop_assert!(index.is_empty());
        }
    }
}

//! A concurrent map bounded by bytes: shards behind read-write locks,
//! evicting by CLOCK (second chance).
//!
//! A read takes its shard's read lock, sets the entry's referenced bit
//! only if it is clear, and clones the value (for `Bytes`, a reference
//! count): readers of different keys in different shards share no cache
//! line. Each shard holds a 1/n share of the budget, so a value heavier
//! than that share is not cached (8 MiB with the default 256 MiB). Eviction runs
//! on insert, under the shard's write lock: the hand passes entries in
//! insertion order, clearing referenced bits and evicting the first entry
//! found clear.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use foldhash::fast::RandomState;

use super::CacheStats;

/// Most shards (the count is a power of two).
const MAX_SHARDS: usize = 32;
/// Stripes of the read counters: threads take them in turn.
const STRIPES: usize = 16;

/// The calling thread's stripe of the read counters, handed out in turn.
fn stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    STRIPE.with(|stripe| *stripe)
}
/// Least budget per shard: a small cache has few shards, and the default
/// 256 MiB cache's 32 shards each hold a largest (4 MiB) value.
const MIN_SHARD_BYTES: u64 = 8 * 1024 * 1024;

/// The map. `V` is cloned out on every hit.
pub struct ClockMap<K, V> {
    shards: Box<[Locked<K, V>]>,
    /// Reads answered and not, one pair per thread stripe, on lines of
    /// their own.
    counts: Box<[Padded<[AtomicU64; 2]>]>,
    hasher: RandomState,
    shard_bytes: u64,
}

/// A shard on cache lines of its own: readers of neighbouring shards
/// never write the same line.
#[repr(align(128))]
struct Padded<T>(T);

/// One shard behind its lock, on lines of its own.
type Locked<K, V> = Padded<RwLock<Shard<K, V>>>;

struct Shard<K, V> {
    slots: HashMap<K, Slot<V>, RandomState>,
    /// Keys in insertion order, each with the stamp of the insertion that
    /// queued it (an older stamp is a leftover of a replaced entry).
    hand: VecDeque<(K, u64)>,
    bytes: u64,
    next_stamp: u64,
    evictions: u64,
}

struct Slot<V> {
    value: V,
    weight: u64,
    stamp: u64,
    referenced: AtomicBool,
}

impl<K: Hash + Eq + Clone, V: Clone> ClockMap<K, V> {
    /// A map of at most `max_bytes`, as weighed at insertion.
    pub fn new(max_bytes: u64) -> ClockMap<K, V> {
        // The most shards, a power of two, that each get MIN_SHARD_BYTES.
        let fit = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS as u64);
        let count = 1usize << fit.ilog2();
        let hasher = RandomState::default();
        let shards = (0..count)
            .map(|_| {
                Padded(RwLock::new(Shard {
                    slots: HashMap::with_hasher(hasher.clone()),
                    hand: VecDeque::new(),
                    bytes: 0,
                    next_stamp: 0,
                    evictions: 0,
                }))
            })
            .collect();
        let counts = (0..STRIPES)
            .map(|_| Padded([AtomicU64::new(0), AtomicU64::new(0)]))
            .collect();
        ClockMap {
            shards,
            counts,
            hasher,
            shard_bytes: max_bytes / count as u64,
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<Shard<K, V>> {
        let hash = self.hasher.hash_one(key);
        // The count is a power of two; take the high bits (the low ones
        // also pick the HashMap bucket inside the shard).
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        &self.shards[index].0
    }

    /// Counts a read as answered (`hit`) or not, on the calling thread's
    /// own stripe: two threads never write the same counter line (counted
    /// by key shard instead, two threads' cached reads fell from 15.6 to
    /// 7.9 M/s).
    pub fn count(&self, hit: bool) {
        self.counts[stripe() % STRIPES].0[usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts, evictions, bytes and entries, summed over the shards (each
    /// read under its lock in turn: a sum, not a snapshot).
    pub fn totals(&self) -> CacheStats {
        let mut totals = CacheStats::default();
        for counts in self.counts.iter() {
            totals.hits += counts.0[0].load(Ordering::Relaxed);
            totals.misses += counts.0[1].load(Ordering::Relaxed);
        }
        for shard in self.shards.iter() {
            let shard = read(&shard.0);
            totals.evictions += shard.evictions;
            totals.bytes += shard.bytes;
            totals.entries += shard.slots.len() as u64;
        }
        totals
    }

    /// The value of `key`, marked as recently used.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(key, true)
    }

    /// The value of `key`, not marked as used (for bookkeeping such as
    /// applying an invalidation).
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(key, false)
    }

    fn find<Q>(&self, key: &Q, used: bool) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = read(self.shard(key));
        let slot = shard.slots.get(key);
        if let Some(slot) = slot.filter(|_| used) {
            if !slot.referenced.load(Ordering::Relaxed) {
                slot.referenced.store(true, Ordering::Relaxed);
            }
        }
        slot.map(|slot| slot.value.clone())
    }

    /// Inserts or replaces `key`, weighing `weight` bytes, evicting what
    /// the budget needs. An entry heavier than a shard's budget is not
    /// kept (and removes any older value of the key).
    pub fn insert(&self, key: K, value: V, weight: u64) {
        let mut shard = write(self.shard(&key));
        shard.remove(&key);
        if weight > self.shard_bytes {
            return;
        }
        while shard.bytes + weight > self.shard_bytes && shard.evict_one() {}
        let stamp = shard.next_stamp;
        shard.next_stamp += 1;
        shard.bytes += weight;
        shard.hand.push_back((key.clone(), stamp));
        shard.slots.insert(
            key,
            Slot {
                value,
                weight,
                stamp,
                referenced: AtomicBool::new(false),
            },
        );
        shard.compact();
    }

    /// Removes `key`, if present.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        write(self.shard(key)).remove(key);
    }

    /// Bytes held, as weighed at insertion.
    #[cfg(test)]
    pub fn weighted_size(&self) -> u64 {
        self.shards.iter().map(|s| read(&s.0).bytes).sum()
    }
}

impl<K: Hash + Eq + Clone, V> Shard<K, V> {
    fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.slots.remove(key) {
            self.bytes -= slot.weight;
        }
    }

    /// Moves the hand one step: drops a leftover, gives a referenced entry
    /// its second chance, or evicts. False when nothing is left to evict.
    fn evict_one(&mut self) -> bool {
        while let Some((key, stamp)) = self.hand.pop_front() {
            let Some(slot) = self.slots.get(&key) else {
                continue; // removed since
            };
            if slot.stamp != stamp {
                continue; // replaced since: its own queue item is later
            }
            if slot.referenced.swap(false, Ordering::Relaxed) {
                self.hand.push_back((key, stamp));
                continue;
            }
            self.remove(&key);
            self.evictions += 1;
            metrics::counter!(crate::metrics::CACHE_EVICTIONS).increment(1);
            return true;
        }
        false
    }

    /// Drops leftovers once they outnumber the entries, so the hand stays
    /// within twice the entries however often keys are replaced.
    fn compact(&mut self) {
        if self.hand.len() > 2 * self.slots.len() + 16 {
            let slots = &self.slots;
            self.hand
                .retain(|(key, stamp)| slots.get(key).is_some_and(|s| s.stamp == *stamp));
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn holds_at_most_its_budget_and_keeps_the_latest_value() {
        let map: ClockMap<u32, u32> = ClockMap::new(10 * 1024 * 1024);
        for round in 0..3 {
            for k in 0..100_000u32 {
                map.insert(k, k + round, 1024);
                assert!(map.weighted_size() <= 10 * 1024 * 1024);
            }
        }
        // The last insert of each key wins; most recent keys survive.
        assert_eq!(map.get(&99_999), Some(99_999 + 2));
        let held = (0..100_000u32).filter(|k| map.get(k).is_some()).count();
        assert!(held > 5_000, "held {held}");
    }

    #[test]
    fn a_referenced_entry_gets_a_second_chance() {
        let map: ClockMap<u32, u32> = ClockMap::new(4 * 1024);
        for k in 0..4 {
            map.insert(k, k, 1024);
        }
        map.get(&0);
        map.insert(4, 4, 1024);
        assert_eq!(map.get(&0), Some(0), "read since insertion: kept");
        assert_eq!(map.get(&1), None, "the oldest unread entry is evicted");
    }

    #[test]
    fn replacing_keys_does_not_grow_the_hand_without_bound() {
        let map: ClockMap<u32, u32> = ClockMap::new(1024 * 1024);
        for i in 0..100_000u32 {
            map.insert(i % 10, i, 8);
        }
        let shard = read(&map.shards[0].0);
        assert!(shard.hand.len() <= 2 * shard.slots.len() + 16);
        drop(shard);
        map.remove(&3);
        assert_eq!(map.get(&3), None);
        assert_eq!(map.weighted_size(), 9 * 8);
    }

    #[test]
    fn an_entry_over_a_shards_budget_is_not_kept() {
        let map: ClockMap<u32, u32> = ClockMap::new(4 * 1024);
        map.insert(1, 1, 8);
        map.insert(1, 2, 8 * 1024);
        assert_eq!(map.get(&1), None);
        assert_eq!(map.weighted_size(), 0);
    }
}

//! The read-through cache: values with their serials, dropped in O(1) by a
//! generation bump, and filled only when the fill cannot undo an
//! invalidation (the fill-vs-invalidate race).
//!
//! Whether a cached value may be *served* is the session's decision
//! (`session`); this module only keeps values consistent with the
//! invalidations applied so far. The entries live in a [`ClockMap`]
//! (`clock`): sharded and bounded by bytes; a hit writes only its shard's
//! lock word and its value's reference count.

mod clock;

use clock::ClockMap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Instant;

use bytes::Bytes;
use store_protocol::Tid;

/// Default cache budget: 256 MiB of keys and values.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Bookkeeping bytes charged per entry on top of its key and value.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug, Clone)]
struct Entry {
    /// `None`: the key was absent (negative caching).
    value: Option<Bytes>,
    /// The TID that wrote the value (`Tid::ZERO` when absent).
    serial: Tid,
    generation: u64,
    filled_at: Instant,
}

/// What the cache holds and has done ([`Client::cache_stats`]).
///
/// [`Client::cache_stats`]: crate::Client::cache_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from the cache (fresh, or stale under `AllowStale`).
    pub hits: u64,
    /// Reads that asked the server (nothing cached, or nothing it may serve).
    pub misses: u64,
    /// Entries evicted to stay within the byte budget.
    pub evictions: u64,
    /// Bytes held: keys, values and a fixed overhead per entry.
    pub bytes: u64,
    /// Entries held (absent keys included: they are cached too).
    pub entries: u64,
}

/// A cached read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The value, `None` if the key was absent.
    pub value: Option<Bytes>,
    /// False when the entry is from before the last invalidate-all: it may
    /// be served only as stale.
    pub current: bool,
    /// When it was filled.
    pub filled_at: Instant,
}

/// Values this client has read, bounded by bytes.
pub struct Cache {
    entries: ClockMap<Bytes, Entry>,
    generation: AtomicU64,
    /// The last TID whose invalidations have been applied.
    applied_tid: AtomicU64,
    /// The last TID this client committed itself: a fill from an older
    /// snapshot could hide its own write (read-your-writes).
    own_tid: AtomicU64,
    /// The generation of the last fill (`u64::MAX`: never filled).
    filled_generation: AtomicU64,
    /// Held for writing while invalidations are applied, for reading while
    /// a fill checks and installs: a fill never straddles an invalidation.
    applying: RwLock<()>,
    /// Keys under these prefixes are never cached.
    uncached: Vec<Bytes>,
}

impl Cache {
    /// An empty cache of at most `max_bytes` of keys, values and overhead,
    /// that never holds keys under the `uncached` prefixes.
    pub fn new(max_bytes: u64, uncached: Vec<Bytes>) -> Cache {
        let entries = ClockMap::new(max_bytes);
        Cache {
            entries,
            generation: AtomicU64::new(0),
            applied_tid: AtomicU64::new(0),
            own_tid: AtomicU64::new(0),
            filled_generation: AtomicU64::new(u64::MAX),
            applying: RwLock::new(()),
            uncached,
        }
    }

    /// Counts a read: answered from the cache (`hit`) or not.
    pub fn count(&self, hit: bool) {
        self.entries.count(hit);
    }

    /// Hits, misses, evictions, bytes and entries.
    pub fn stats(&self) -> CacheStats {
        self.entries.totals()
    }

    /// Drops every entry, in O(1) by a generation bump: dropped entries
    /// stay readable only as stale (`AllowStale`) until replaced or
    /// evicted, and a read in flight does not fill its value back.
    pub fn invalidate_all(&self) {
        self.revalidate(self.applied_tid(), None);
    }

    /// The current generation; pass it to [`Cache::fill`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last TID whose invalidations were applied.
    pub fn applied_tid(&self) -> Tid {
        Tid(self.applied_tid.load(Ordering::Acquire))
    }

    /// The cached entry for `key`, current or from an older generation.
    pub fn lookup(&self, key: &[u8]) -> Option<Cached> {
        let entry = self.entries.get(key)?;
        Some(Cached {
            current: entry.generation == self.generation(),
            value: entry.value,
            filled_at: entry.filled_at,
        })
    }

    /// Installs a value read from the server from a snapshot at `read_tid`,
    /// by a read that started in `generation`. Skipped if the cache was
    /// dropped since, or if invalidations newer than the snapshot were
    /// already applied (one of them might concern this key, and its removal
    /// must not be undone).
    pub fn fill(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        serial: Tid,
        read_tid: Tid,
        generation: u64,
    ) -> bool {
        let _guard = self
            .applying
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let floor = self
            .applied_tid()
            .0
            .max(self.own_tid.load(Ordering::Acquire));
        if generation != self.generation()
            || read_tid.0 < floor
            || self.uncached.iter().any(|prefix| key.starts_with(prefix))
        {
            return false;
        }
        let weight = key.len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD;
        self.entries.insert(
            key,
            Entry {
                value,
                serial,
                generation,
                filled_at: Instant::now(),
            },
            weight as u64,
        );
        self.filled_generation.store(generation, Ordering::Release);
        true
    }

    /// Whether the cache may hold current entries: a new session must then
    /// hear of every commit, not only of keys it reads itself.
    pub fn holds_current(&self) -> bool {
        self.filled_generation.load(Ordering::Acquire) == self.generation()
    }

    /// A pong certified that every invalidation up to `tid` for this
    /// client's keys came before it, and so was applied.
    pub fn advance_applied(&self, tid: Tid) {
        self.applied_tid.fetch_max(tid.0, Ordering::AcqRel);
    }

    /// Applies `Invalidate{tid, keys}`: drops each key's entry unless it
    /// already holds that commit's value or a later one.
    pub fn invalidate(&self, tid: Tid, keys: &[Bytes]) {
        let _guard = self
            .applying
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.drop_older(tid, keys);
        self.applied_tid.fetch_max(tid.0, Ordering::AcqRel);
    }

    /// Records this client's own commit `tid` of `keys`, so its next read of
    /// them never returns what it overwrote, even before the session stream
    /// delivers the invalidation.
    pub fn own_commit(&self, tid: Tid, keys: impl IntoIterator<Item = Bytes>) {
        let _guard = self
            .applying
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys: Vec<Bytes> = keys.into_iter().collect();
        self.drop_older(tid, &keys);
        self.own_tid.fetch_max(tid.0, Ordering::AcqRel);
    }

    fn drop_older(&self, tid: Tid, keys: &[Bytes]) {
        for key in keys {
            let keep = self
                .entries
                .peek(key)
                .is_some_and(|e| e.serial >= tid && e.generation == self.generation());
            if !keep {
                self.entries.remove(key);
            }
        }
    }

    /// Applies a new session's revalidation: `Some(keys)` changed since the
    /// cache's applied TID (drop just those); `None`: drop everything, in
    /// O(1), by a generation bump (old entries stay readable only as stale,
    /// for `AllowStale`, until replaced or evicted). Afterwards
    /// invalidations count as applied up to `last_tid`.
    pub fn revalidate(&self, last_tid: Tid, changed: Option<&[Bytes]>) {
        let _guard = self
            .applying
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match changed {
            Some(keys) => {
                for key in keys {
                    self.entries.remove(key);
                }
            }
            None => {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.applied_tid.fetch_max(last_tid.0, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// A lookup's value and whether it is current.
    fn seen(cache: &Cache, key: &[u8]) -> Option<(Option<Bytes>, bool)> {
        cache.lookup(key).map(|hit| (hit.value, hit.current))
    }

    #[test]
    fn whether_it_holds_current_entries_is_known() {
        let cache = Cache::new(1 << 20, Vec::new());
        assert!(!cache.holds_current());
        cache.fill(b("k"), None, Tid::ZERO, Tid::ZERO, cache.generation());
        assert!(cache.holds_current());
        cache.revalidate(Tid(1), None);
        assert!(!cache.holds_current(), "dropped: only stale entries remain");
    }

    #[test]
    fn fills_serve_until_invalidated() {
        let cache = Cache::new(1 << 20, Vec::new());
        let g = cache.generation();
        assert!(cache.fill(b("k"), Some(b("v1")), Tid(3), Tid(5), g));
        assert_eq!(seen(&cache, b"k"), Some((Some(b("v1")), true)));
        cache.invalidate(Tid(6), &[b("k")]);
        assert_eq!(cache.lookup(b"k"), None);
        assert_eq!(cache.applied_tid(), Tid(6));
    }

    #[test]
    fn an_invalidation_for_an_older_commit_keeps_a_newer_value() {
        let cache = Cache::new(1 << 20, Vec::new());
        cache.fill(b("k"), Some(b("v7")), Tid(7), Tid(7), cache.generation());
        cache.invalidate(Tid(7), &[b("k")]);
        assert_eq!(cache.lookup(b"k").unwrap().value, Some(b("v7")));
    }

    /// The fill-vs-invalidate race, forced: a read fetches k at snapshot 5,
    /// then the invalidation for commit 6 (which changed k) is applied before
    /// the read installs its value. The stale value must not be installed.
    #[test]
    fn a_fill_from_before_an_applied_invalidation_is_refused() {
        let cache = Cache::new(1 << 20, Vec::new());
        let generation = cache.generation();
        // 1. The read's response: value at serial 4 from snapshot 5.
        let (value, serial, read_tid) = (b("old"), Tid(4), Tid(5));
        // 2. Meanwhile the session applies commit 6's invalidation of k.
        cache.invalidate(Tid(6), &[b("k")]);
        // 3. The read tries to install what it fetched.
        assert!(!cache.fill(b("k"), Some(value), serial, read_tid, generation));
        assert_eq!(cache.lookup(b"k"), None);
    }

    #[test]
    fn own_commits_are_never_hidden_by_the_cache() {
        let cache = Cache::new(1 << 20, Vec::new());
        let generation = cache.generation();
        cache.fill(b("k"), Some(b("old")), Tid(1), Tid(1), generation);
        cache.own_commit(Tid(5), [b("k")]);
        assert_eq!(cache.lookup(b"k"), None);
        // A read that fetched before the commit must not reinstall "old".
        assert!(!cache.fill(b("k"), Some(b("old")), Tid(1), Tid(4), generation));
        assert!(cache.fill(b("k"), Some(b("new")), Tid(5), Tid(5), generation));
        assert_eq!(
            cache.applied_tid(),
            Tid::ZERO,
            "own commits are not invalidations"
        );
    }

    #[test]
    fn a_fill_from_before_a_cache_drop_is_refused() {
        let cache = Cache::new(1 << 20, Vec::new());
        let generation = cache.generation();
        cache.revalidate(Tid::ZERO, None);
        assert!(!cache.fill(b("k"), Some(b("v")), Tid(1), Tid(1), generation));
    }

    #[test]
    fn dropping_the_cache_is_a_generation_bump_leaving_stale_values_readable() {
        let cache = Cache::new(1 << 20, Vec::new());
        cache.fill(b("k"), Some(b("v")), Tid(1), Tid(1), cache.generation());
        cache.revalidate(Tid(1), None);
        assert_eq!(seen(&cache, b"k"), Some((Some(b("v")), false)));
        // A new fill replaces it as current.
        cache.fill(b("k"), Some(b("w")), Tid(2), Tid(2), cache.generation());
        assert_eq!(seen(&cache, b"k"), Some((Some(b("w")), true)));
    }

    #[test]
    fn revalidation_drops_only_changed_keys_or_everything() {
        let cache = Cache::new(1 << 20, Vec::new());
        let g = cache.generation();
        cache.fill(b("a"), Some(b("1")), Tid(1), Tid(2), g);
        cache.fill(b("b"), None, Tid::ZERO, Tid(2), g);
        cache.revalidate(Tid(9), Some(&[b("a")]));
        assert_eq!(cache.lookup(b"a"), None);
        assert_eq!(seen(&cache, b"b"), Some((None, true)));
        assert_eq!(cache.applied_tid(), Tid(9));
        cache.revalidate(Tid(12), None);
        assert!(!cache.lookup(b"b").unwrap().current);
    }

    #[test]
    fn uncached_prefixes_are_never_filled_and_stats_count_what_is_held() {
        let cache = Cache::new(1 << 20, vec![b("session/")]);
        let g = cache.generation();
        assert!(!cache.fill(b("session/42"), Some(b("v")), Tid(1), Tid(1), g));
        assert!(cache.fill(b("user/42"), Some(b("v")), Tid(1), Tid(1), g));
        assert_eq!(cache.lookup(b"session/42"), None);
        cache.count(true);
        cache.count(true);
        cache.count(false);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
        assert_eq!(stats.bytes, (7 + 1 + ENTRY_OVERHEAD) as u64);
        cache.invalidate_all();
        assert_eq!(seen(&cache, b"user/42"), Some((Some(b("v")), false)));
    }

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let cache = Cache::new(64 * 1024, Vec::new());
        for i in 0..1000 {
            cache.fill(
                Bytes::from(format!("k{i}")),
                Some(Bytes::from(vec![0u8; 1024])),
                Tid(1),
                Tid(1),
                0,
            );
        }
        assert!(
            cache.entries.weighted_size() <= 64 * 1024,
            "{}",
            cache.entries.weighted_size()
        );
    }
}

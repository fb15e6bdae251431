//! Invalidations: which keys each durable commit changed, routed in TID
//! order to the sessions that may cache them, and a bounded change log so
//! that a reconnecting client can revalidate its cache instead of dropping
//! it.
//!
//! A session "may cache" a key once it has read it (the server registers
//! the key before reading, so no commit can slip between the snapshot and
//! the registration). A session that opens with a cache already filled
//! elsewhere, or reads too many keys to track, gets every invalidation.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use store_protocol::Tid;
use tokio::sync::{mpsc, watch};

/// The keys one commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The commit.
    pub tid: Tid,
    /// Keys it wrote, each once.
    pub keys: Vec<Bytes>,
}

/// Commits read back from the log at start-up, for [`Invalidations::resume`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentChanges {
    /// Every commit after this TID is in `commits`.
    pub horizon: Tid,
    /// The commits, in TID order.
    pub commits: Vec<Invalidation>,
}

/// Default number of keys the change log remembers (about 100k keys of a
/// few dozen bytes: a few MiB). A client whose `cached_tid` is older than
/// the log drops its cache on reconnect instead of revalidating it.
pub const DEFAULT_CHANGE_LOG_KEYS: usize = 100_000;

/// Invalidations queued per session before it is considered too slow and
/// disconnected (its client then revalidates from the change log).
const SESSION_BACKLOG: usize = 16_384;

/// Keys tracked per session; past this the session gets every
/// invalidation instead (tracking would cost more than it saves).
const MAX_INTEREST_KEYS: usize = 100_000;

/// Default keys tracked across all sessions (about 100 bytes each: some
/// 100 MiB at most). A session whose reads would pass it gets every
/// invalidation instead: correct, only chattier.
pub const DEFAULT_INTEREST_BUDGET: usize = 1_000_000;

/// Identifies a session to the router.
pub type SessionId = u64;

/// Routes invalidations to sessions and remembers recent ones.
pub struct Invalidations {
    state: Mutex<State>,
    /// The last TID published, for readers waiting on it.
    published: watch::Sender<Tid>,
}

struct State {
    log: ChangeLog,
    routes: HashMap<SessionId, Route>,
    /// Key → sessions that read it. A session's entries leave with it
    /// (closed, too slow, or switched to every invalidation).
    interest: HashMap<Bytes, Vec<SessionId>>,
    /// Entries in `interest`, over all keys.
    interest_entries: usize,
    /// Most entries `interest` may hold.
    interest_budget: usize,
    next_id: SessionId,
}

struct Route {
    queue: mpsc::Sender<Arc<Invalidation>>,
    /// `None`: every invalidation; `Some(keys)`: those of these keys.
    keys: Option<HashSet<Bytes>>,
}

struct ChangeLog {
    entries: VecDeque<Arc<Invalidation>>,
    keys: usize,
    capacity_keys: usize,
    /// Every commit after this TID is in `entries`.
    horizon: Tid,
    /// The last TID published.
    last: Tid,
}

/// A new session's view: the keys changed since its client's `cached_tid`
/// (or `None` if the log does not reach back), and its later invalidations.
pub struct Subscription {
    /// The session's id, for [`Invalidations::register`].
    pub id: SessionId,
    /// The last TID published before the subscription: `changed` covers
    /// up to it, `receiver` delivers what comes after.
    pub covered_tid: Tid,
    /// See [`store_protocol::Welcome::changed_since_cached`].
    pub changed: Option<Vec<Bytes>>,
    /// Invalidations routed to this session; it ends (`None`) if the
    /// session fell too far behind.
    pub receiver: mpsc::Receiver<Arc<Invalidation>>,
}

impl Invalidations {
    /// An empty log whose history starts after `last_tid` (nothing before
    /// a restart is remembered), remembering `capacity_keys` changed keys
    /// and tracking at most `interest_budget` keys read across sessions.
    pub fn new(last_tid: Tid, capacity_keys: usize, interest_budget: usize) -> Invalidations {
        Invalidations {
            state: Mutex::new(State {
                log: ChangeLog {
                    entries: VecDeque::new(),
                    keys: 0,
                    capacity_keys,
                    horizon: last_tid,
                    last: last_tid,
                },
                routes: HashMap::new(),
                interest: HashMap::new(),
                interest_entries: 0,
                interest_budget,
                next_id: 1,
            }),
            published: watch::Sender::new(last_tid),
        }
    }

    /// The last TID published: every commit up to it is acknowledged.
    pub fn published(&self) -> Tid {
        *self.published.borrow()
    }

    /// Waits until every commit up to `tid` is published (acknowledged),
    /// at most `timeout`; returns whether it is.
    pub async fn wait_published(&self, tid: Tid, timeout: std::time::Duration) -> bool {
        // The common case on every read: nothing to wait for, no timer.
        if *self.published.borrow() >= tid {
            return true;
        }
        let mut published = self.published.subscribe();
        tokio::time::timeout(timeout, published.wait_for(|last| *last >= tid))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Fills the change log from history read back at start-up: `recent`
    /// holds every commit after its horizon, in TID order. Called before
    /// anything is published; a restarted server then revalidates caches
    /// instead of dropping them.
    pub fn resume(&self, recent: RecentChanges) {
        let mut state = self.lock();
        let log = &mut state.log;
        if !log.entries.is_empty() || recent.horizon > log.last {
            return;
        }
        let last = log.last;
        log.horizon = recent.horizon;
        for invalidation in recent.commits {
            if invalidation.tid > log.horizon && invalidation.tid <= last {
                log.push(Arc::new(invalidation));
            }
        }
        // Pushing moved `last` to the newest commit read back; it stays the
        // store's last TID.
        log.last = last;
    }

    /// Forgets the change log: the history was replaced (a snapshot was
    /// installed) and now ends at `last_tid`. Sessions are untouched.
    pub fn reset(&self, last_tid: Tid) {
        let mut state = self.lock();
        let log = &mut state.log;
        log.entries.clear();
        log.keys = 0;
        log.horizon = last_tid;
        log.last = last_tid;
        drop(state);
        self.published.send_replace(last_tid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a durable commit and routes it to every session that may
    /// cache one of its keys. Must be called in TID order, before the
    /// commit is acknowledged.
    pub fn publish(&self, invalidation: Invalidation) {
        let invalidation = Arc::new(invalidation);
        let mut state = self.lock();
        state.log.push(invalidation.clone());
        self.published.send_replace(invalidation.tid);
        let mut targets: HashSet<SessionId> = state
            .routes
            .iter()
            .filter(|(_, route)| route.keys.is_none())
            .map(|(id, _)| *id)
            .collect();
        for key in &invalidation.keys {
            if let Some(sessions) = state.interest.get(key) {
                targets.extend(sessions.iter().copied());
            }
        }
        for id in targets {
            let lagged = state
                .routes
                .get(&id)
                .is_some_and(|route| route.queue.try_send(invalidation.clone()).is_err());
            if lagged {
                // Dropping the sender ends the session's stream of
                // invalidations: it closes, and its client revalidates.
                state.remove_route(id);
            }
        }
    }

    /// Subscribes a new session whose client's cache is current as of
    /// `cached`. A client that `holds_cache` (filled by an earlier session)
    /// gets every invalidation: this server never saw what it read.
    pub fn subscribe(&self, cached: Tid, holds_cache: bool) -> Subscription {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let (queue, receiver) = mpsc::channel(SESSION_BACKLOG);
        let keys = (!holds_cache).then(HashSet::new);
        state.routes.insert(id, Route { queue, keys });
        Subscription {
            id,
            covered_tid: state.log.last,
            changed: state.log.changed_since(cached),
            receiver,
        }
    }

    /// Notes that session `id` is about to read `keys` (and may cache
    /// them): called *before* the read, so no commit falls between.
    pub fn register(&self, id: SessionId, keys: &[Bytes]) {
        let mut state = self.lock();
        let State {
            routes,
            interest,
            interest_entries,
            interest_budget,
            ..
        } = &mut *state;
        let Some(Route {
            keys: Some(tracked),
            ..
        }) = routes.get_mut(&id)
        else {
            return; // gets everything already, or closed
        };
        let over = tracked.len().saturating_add(keys.len()) > MAX_INTEREST_KEYS
            || interest_entries.saturating_add(keys.len()) > *interest_budget;
        if over {
            // Tracking would cost more than it saves: every invalidation.
            state.track_everything(id);
            return;
        }
        for key in keys {
            if tracked.insert(key.clone()) {
                interest.entry(key.clone()).or_default().push(id);
                *interest_entries += 1;
            }
        }
    }

    /// Forgets a closed session, and every key it was tracked for.
    pub fn unsubscribe(&self, id: SessionId) {
        self.lock().remove_route(id);
    }

    /// Everything routed to a session so far, and the last TID published:
    /// taken together, so a pong that follows them can promise that every
    /// invalidation for this session up to that TID came before it.
    pub fn drain(
        &self,
        receiver: &mut mpsc::Receiver<Arc<Invalidation>>,
    ) -> (Vec<Arc<Invalidation>>, Tid) {
        let state = self.lock();
        let mut pending = Vec::new();
        while let Ok(invalidation) = receiver.try_recv() {
            pending.push(invalidation);
        }
        (pending, state.log.last)
    }
}

impl State {
    /// Removes session `id`'s entries from the interest map.
    fn forget_interest(&mut self, id: SessionId, tracked: HashSet<Bytes>) {
        for key in tracked {
            if let Some(sessions) = self.interest.get_mut(&key) {
                let before = sessions.len();
                sessions.retain(|s| *s != id);
                self.interest_entries -= before - sessions.len();
                if sessions.is_empty() {
                    self.interest.remove(&key);
                }
            }
        }
    }

    /// Session `id` gets every invalidation from now on; its tracked keys
    /// are forgotten.
    fn track_everything(&mut self, id: SessionId) {
        let tracked = self.routes.get_mut(&id).and_then(|route| route.keys.take());
        if let Some(tracked) = tracked {
            self.forget_interest(id, tracked);
        }
    }

    /// Removes session `id`'s route and its interest.
    fn remove_route(&mut self, id: SessionId) {
        if let Some(Route {
            keys: Some(tracked),
            ..
        }) = self.routes.remove(&id)
        {
            self.forget_interest(id, tracked);
        }
    }
}

impl ChangeLog {
    fn push(&mut self, invalidation: Arc<Invalidation>) {
        self.last = invalidation.tid;
        self.keys += invalidation.keys.len();
        self.entries.push_back(invalidation);
        while self.keys > self.capacity_keys {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            self.keys -= oldest.keys.len();
            self.horizon = oldest.tid;
        }
    }

    fn changed_since(&self, cached: Tid) -> Option<Vec<Bytes>> {
        // A cache ahead of this server's history (it heard of commits a
        // deposed primary never had acknowledged) cannot be revalidated.
        (cached >= self.horizon && cached <= self.last).then(|| {
            let keys: BTreeSet<&Bytes> = self
                .entries
                .iter()
                .filter(|entry| entry.tid > cached)
                .flat_map(|entry| entry.keys.iter())
                .collect();
            keys.into_iter().cloned().collect()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn inv(tid: u64, keys: &[&'static str]) -> Invalidation {
        Invalidation {
            tid: Tid(tid),
            keys: keys
                .iter()
                .map(|k| Bytes::from_static(k.as_bytes()))
                .collect(),
        }
    }

    fn tids(pending: &[Arc<Invalidation>]) -> Vec<u64> {
        pending.iter().map(|i| i.tid.0).collect()
    }

    #[test]
    fn revalidation_lists_keys_changed_since_the_cached_tid() {
        let hub = Invalidations::new(Tid(10), 100, DEFAULT_INTEREST_BUDGET);
        hub.publish(inv(11, &["a", "b"]));
        hub.publish(inv(12, &["b", "c"]));
        let sub = hub.subscribe(Tid(11), true);
        assert_eq!(sub.covered_tid, Tid(12));
        assert_eq!(sub.changed, Some(vec![Bytes::from("b"), Bytes::from("c")]));
        assert_eq!(hub.subscribe(Tid(12), true).changed, Some(vec![]));
        // Before the log's start (a restart): drop the cache.
        assert_eq!(hub.subscribe(Tid(9), true).changed, None);
        assert_eq!(hub.subscribe(Tid(10), true).changed.unwrap().len(), 3);
    }

    #[test]
    fn a_restarted_log_resumes_from_history_read_back() {
        let hub = Invalidations::new(Tid(12), 100, DEFAULT_INTEREST_BUDGET);
        hub.resume(RecentChanges {
            horizon: Tid(10),
            commits: vec![inv(11, &["a"]), inv(12, &["b"])],
        });
        assert_eq!(
            hub.subscribe(Tid(11), true).changed,
            Some(vec![Bytes::from("b")])
        );
        assert_eq!(hub.subscribe(Tid(12), true).changed, Some(vec![]));
        assert_eq!(hub.subscribe(Tid(9), true).changed, None, "before the log");
        hub.publish(inv(13, &["c"]));
        let sub = hub.subscribe(Tid(10), true);
        assert_eq!(
            (sub.covered_tid, sub.changed.map(|k| k.len())),
            (Tid(13), Some(3))
        );
        // Only before anything is published.
        hub.resume(RecentChanges {
            horizon: Tid(0),
            commits: vec![],
        });
        assert_eq!(hub.subscribe(Tid(5), true).changed, None);
    }

    #[test]
    fn the_log_forgets_oldest_commits_past_its_capacity() {
        let hub = Invalidations::new(Tid(0), 3, DEFAULT_INTEREST_BUDGET);
        hub.publish(inv(1, &["a", "b"]));
        hub.publish(inv(2, &["c"]));
        hub.publish(inv(3, &["d"]));
        assert_eq!(
            hub.subscribe(Tid(0), false).changed,
            None,
            "commit 1 was forgotten"
        );
        assert_eq!(
            hub.subscribe(Tid(1), false).changed,
            Some(vec![Bytes::from("c"), Bytes::from("d")])
        );
    }

    #[test]
    fn sessions_get_invalidations_of_keys_they_read_in_order() {
        let hub = Invalidations::new(Tid(0), 100, DEFAULT_INTEREST_BUDGET);
        let mut reader = hub.subscribe(Tid(0), false);
        let mut bystander = hub.subscribe(Tid(0), false);
        let mut warm = hub.subscribe(Tid(0), true);
        hub.register(reader.id, &[Bytes::from("a"), Bytes::from("c")]);
        hub.publish(inv(1, &["a"]));
        hub.publish(inv(2, &["b"]));
        hub.publish(inv(3, &["c", "a"]));
        let (pending, last) = hub.drain(&mut reader.receiver);
        assert_eq!((tids(&pending), last), (vec![1, 3], Tid(3)));
        let (pending, last) = hub.drain(&mut bystander.receiver);
        assert_eq!(
            (tids(&pending), last),
            (vec![], Tid(3)),
            "read nothing, told nothing"
        );
        let (pending, _) = hub.drain(&mut warm.receiver);
        assert_eq!(
            tids(&pending),
            vec![1, 2, 3],
            "a warm cache hears everything"
        );
        hub.unsubscribe(reader.id);
        hub.publish(inv(4, &["a"]));
        assert!(hub.lock().interest.is_empty());
    }

    #[test]
    fn a_session_that_falls_behind_is_cut_off() {
        let hub = Invalidations::new(Tid(0), 1_000_000, DEFAULT_INTEREST_BUDGET);
        let mut slow = hub.subscribe(Tid(0), true);
        for tid in 1..=(SESSION_BACKLOG as u64 + 1) {
            hub.publish(inv(tid, &["k"]));
        }
        let (pending, _) = hub.drain(&mut slow.receiver);
        assert_eq!(pending.len(), SESSION_BACKLOG);
        assert!(slow.receiver.try_recv().is_err());
        assert!(
            slow.receiver.is_closed(),
            "its stream of invalidations ended"
        );
    }

    /// Every interest entry a session made leaves with it, however it
    /// goes: closed, cut off for falling behind, or switched to hearing
    /// everything (per session or by the global budget).
    #[test]
    fn a_sessions_interest_leaves_with_it_and_the_total_is_bounded() {
        let keys = |range: std::ops::Range<usize>| -> Vec<Bytes> {
            range.map(|i| Bytes::from(format!("k{i}"))).collect()
        };
        let hub = Invalidations::new(Tid(0), 1_000, 250);
        // Closed.
        let a = hub.subscribe(Tid(0), false);
        hub.register(a.id, &keys(0..100));
        assert_eq!(hub.lock().interest_entries, 100);
        hub.unsubscribe(a.id);
        assert!(hub.lock().interest.is_empty());
        assert_eq!(hub.lock().interest_entries, 0);
        // Past the global budget: this session hears everything instead,
        // and what it had tracked is freed.
        let b = hub.subscribe(Tid(0), false);
        let mut c = hub.subscribe(Tid(0), false);
        hub.register(b.id, &keys(0..200));
        hub.register(c.id, &keys(0..20));
        hub.register(c.id, &keys(1_000..1_100));
        assert_eq!(hub.lock().interest_entries, 200, "c switched to everything");
        hub.publish(inv(1, &["unread"]));
        let (pending, _) = hub.drain(&mut c.receiver);
        assert_eq!(
            pending.len(),
            1,
            "a session hearing everything hears unread keys"
        );
        // Cut off for falling behind.
        for tid in 2..=(SESSION_BACKLOG as u64 + 2) {
            hub.publish(inv(tid, &["k1"]));
        }
        assert!(
            hub.lock().interest.is_empty(),
            "b was cut off with its interest"
        );
        assert_eq!(hub.lock().interest_entries, 0);
        drop((b, c));
    }
}

//! Invalidations: which keys each durable commit changed, fanned out to every
//! session in TID order, and a bounded change log so that a reconnecting
//! client can revalidate its cache instead of dropping it.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use store_protocol::Tid;
use tokio::sync::broadcast;

/// The keys one commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The commit.
    pub tid: Tid,
    /// Keys it wrote, each once.
    pub keys: Vec<Bytes>,
}

/// Default number of keys the change log remembers (about 100k keys of a
/// few dozen bytes: a few MiB). A client whose `cached_tid` is older than
/// the log drops its cache on reconnect instead of revalidating it.
pub const DEFAULT_CHANGE_LOG_KEYS: usize = 100_000;

/// Invalidations queued per session before it is considered too slow and
/// disconnected (its client then revalidates from the change log).
const SESSION_BACKLOG: usize = 16_384;

/// Publishes invalidations to sessions and remembers recent ones.
pub struct Invalidations {
    log: Mutex<ChangeLog>,
    fanout: broadcast::Sender<Arc<Invalidation>>,
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

/// A session's view: the keys changed since its client's `cached_tid`
/// (or `None` if the log does not reach back), and every later invalidation.
pub struct Subscription {
    /// The last TID whose invalidation is covered by `changed` or was
    /// published before the subscription; `receiver` delivers the rest
    /// (it may repeat TIDs up to this one, which the session skips).
    pub covered_tid: Tid,
    /// See [`store_protocol::Welcome::changed_since_cached`].
    pub changed: Option<Vec<Bytes>>,
    /// Invalidations published after the subscription.
    pub receiver: broadcast::Receiver<Arc<Invalidation>>,
}

impl Invalidations {
    /// An empty log whose history starts after `last_tid` (nothing before
    /// a restart is remembered).
    pub fn new(last_tid: Tid, capacity_keys: usize) -> Invalidations {
        let (fanout, _) = broadcast::channel(SESSION_BACKLOG);
        Invalidations {
            log: Mutex::new(ChangeLog {
                entries: VecDeque::new(),
                keys: 0,
                capacity_keys,
                horizon: last_tid,
                last: last_tid,
            }),
            fanout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChangeLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a durable commit and sends it to every session. Must be
    /// called in TID order, before the commit is acknowledged.
    pub fn publish(&self, invalidation: Invalidation) {
        let invalidation = Arc::new(invalidation);
        let mut log = self.lock();
        log.last = invalidation.tid;
        log.keys += invalidation.keys.len();
        log.entries.push_back(invalidation.clone());
        while log.keys > log.capacity_keys {
            let Some(oldest) = log.entries.pop_front() else {
                break;
            };
            log.keys -= oldest.keys.len();
            log.horizon = oldest.tid;
        }
        // No receivers is fine: no session is open.
        let _ = self.fanout.send(invalidation);
    }

    /// Subscribes a new session whose client's cache is current as of
    /// `cached`.
    pub fn subscribe(&self, cached: Tid) -> Subscription {
        let log = self.lock();
        let receiver = self.fanout.subscribe();
        let changed = (cached >= log.horizon).then(|| {
            let keys: BTreeSet<&Bytes> = log
                .entries
                .iter()
                .filter(|entry| entry.tid > cached)
                .flat_map(|entry| entry.keys.iter())
                .collect();
            keys.into_iter().cloned().collect()
        });
        Subscription {
            covered_tid: log.last,
            changed,
            receiver,
        }
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

    #[test]
    fn revalidation_lists_keys_changed_since_cached() {
        let hub = Invalidations::new(Tid(10), 100);
        hub.publish(inv(11, &["a", "b"]));
        hub.publish(inv(12, &["b", "c"]));
        let sub = hub.subscribe(Tid(11));
        assert_eq!(sub.covered_tid, Tid(12));
        assert_eq!(sub.changed, Some(vec![Bytes::from("b"), Bytes::from("c")]));
        assert_eq!(hub.subscribe(Tid(12)).changed, Some(vec![]));
        // Before the log's start (a restart): drop the cache.
        assert_eq!(hub.subscribe(Tid(9)).changed, None);
        assert_eq!(hub.subscribe(Tid(10)).changed.unwrap().len(), 3);
    }

    #[test]
    fn the_log_forgets_oldest_commits_past_its_capacity() {
        let hub = Invalidations::new(Tid(0), 3);
        hub.publish(inv(1, &["a", "b"]));
        hub.publish(inv(2, &["c"]));
        hub.publish(inv(3, &["d"]));
        assert_eq!(
            hub.subscribe(Tid(0)).changed,
            None,
            "commit 1 was forgotten"
        );
        assert_eq!(
            hub.subscribe(Tid(1)).changed,
            Some(vec![Bytes::from("c"), Bytes::from("d")])
        );
    }

    #[tokio::test]
    async fn subscribers_receive_later_invalidations_in_order() {
        let hub = Invalidations::new(Tid(0), 100);
        hub.publish(inv(1, &["a"]));
        let mut sub = hub.subscribe(Tid(1));
        hub.publish(inv(2, &["b"]));
        hub.publish(inv(3, &["c"]));
        assert_eq!(sub.receiver.recv().await.unwrap().tid, Tid(2));
        assert_eq!(sub.receiver.recv().await.unwrap().tid, Tid(3));
    }
}

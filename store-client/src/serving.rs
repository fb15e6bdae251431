//! The one decision: *may this cached value be served, and as what?*
//!
//! Every read path (`get`, `read`, `get_many`, `read_many`) looks the key
//! up and asks [`decide`]; nothing else in the client answers from the
//! cache. The inputs are all known at the read: whether the session is
//! proven live now, whether the entry survived the last drop of the cache
//! (its generation), how old it is against the time-to-live, and the
//! call's [`ReadPolicy`].

use std::time::{Duration, Instant};

use crate::config::ReadPolicy;

/// What a read may do with a cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serve {
    /// Answer from the cache: the value is current.
    Fresh,
    /// Answer from the cache, marked stale (`AllowStale` only).
    Stale,
    /// Ask the server (after waiting for proof, under `Wait`).
    Server,
}

/// A cached entry, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Filled in the cache's current generation (not dropped since).
    pub current: bool,
    /// When it was filled.
    pub filled_at: Instant,
}

/// May `entry` (if any) be served at `now`, to a read with `policy`, while
/// the session is (`fresh`) or is not proven live, with entries living at
/// most `ttl`?
///
/// * A current entry younger than `ttl` is served fresh while the session
///   is proven live.
/// * While it is not, `AllowStale` serves any entry it has (dropped or
///   old included: the last value this client knew), marked stale.
/// * Everything else asks the server.
pub(crate) fn decide(
    entry: Option<Entry>,
    fresh: bool,
    policy: ReadPolicy,
    ttl: Option<Duration>,
    now: Instant,
) -> Serve {
    let Some(entry) = entry else {
        return Serve::Server;
    };
    if !fresh {
        return if policy == ReadPolicy::AllowStale {
            Serve::Stale
        } else {
            Serve::Server
        };
    }
    let young = ttl.is_none_or(|ttl| now.saturating_duration_since(entry.filled_at) < ttl);
    if entry.current && young {
        Serve::Fresh
    } else {
        Serve::Server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_table() {
        let t0 = Instant::now();
        let ttl = Some(Duration::from_secs(5));
        let wait = ReadPolicy::Wait(Duration::from_secs(1));
        let fail = ReadPolicy::FailFast;
        let stale = ReadPolicy::AllowStale;
        let entry = |current, age: u64| {
            Some(Entry {
                current,
                filled_at: t0,
            })
            .map(|e| (e, t0 + Duration::from_secs(age)))
        };
        use Serve::*;
        // (entry: current, age s), fresh session, policy, ttl → decision
        let table = [
            (entry(true, 0), true, wait, None, Fresh),
            (entry(true, 0), true, fail, None, Fresh),
            (entry(true, 0), true, stale, None, Fresh),
            (entry(true, 100), true, wait, None, Fresh),
            (entry(true, 4), true, wait, ttl, Fresh),
            (entry(true, 5), true, wait, ttl, Server),
            (entry(true, 5), true, stale, ttl, Server),
            (entry(false, 0), true, wait, None, Server),
            (entry(false, 0), true, stale, None, Server),
            (entry(true, 0), false, wait, None, Server),
            (entry(true, 0), false, fail, None, Server),
            (entry(true, 0), false, stale, None, Stale),
            (entry(false, 0), false, stale, None, Stale),
            (entry(true, 9), false, stale, ttl, Stale),
            (None, true, wait, None, Server),
            (None, false, stale, None, Server),
        ];
        for (i, (entry, fresh, policy, ttl, want)) in table.into_iter().enumerate() {
            let (entry, now) = match entry {
                Some((e, now)) => (Some(e), now),
                None => (None, t0),
            };
            assert_eq!(decide(entry, fresh, policy, ttl, now), want, "row {i}");
        }
    }
}

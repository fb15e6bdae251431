//! The checkers of single-key reads (DESIGN §9): registers written with
//! unique values, read from the server or from a client's cache.
//!
//! The store orders every key's writes by TID, so a read's place in the
//! order is the TID of the write whose value it returned (0 for "absent").
//! Against that known version order the checks are Elle's for a
//! read-write register, pair by pair in real time (the clock is the one
//! monotonic clock of the history):
//!
//! * **Linearizable reads from the server**: a read returns a value that
//!   was committed (never an aborted or invented one), never from a write
//!   invoked after the read completed, never older than a write
//!   acknowledged before it was invoked, and never older than another
//!   server read that completed before it began. Acknowledged writes take
//!   TIDs in real-time order.
//! * **Bounded staleness of cached reads**: a cached read may miss only
//!   writes acknowledged less than `stale_after` before it (1 ms
//!   resolution); the largest miss seen is reported.
//! * **Monotonic reads**: no client's successive reads of a key go back in
//!   time, across reconnects and failovers, cache or server alike.

use std::collections::HashMap;
use std::time::Duration;

/// A write of a unique `value`, as the history saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The value written.
    pub value: String,
    /// The TID it committed at; `None` if it did not commit (a definite
    /// failure, or an unknown outcome resolved as abandoned).
    pub tid: Option<u64>,
    /// When the client invoked it (ns on the history's clock).
    pub invoked: u128,
    /// When the client got its acknowledgement; `None` if it never did
    /// (a failure, or an unknown outcome).
    pub acked: Option<u128>,
}

/// A read, as the history saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The client that read.
    pub process: usize,
    /// The value returned, `None` for "absent".
    pub value: Option<String>,
    /// True if the client's cache answered.
    pub cached: bool,
    /// When the client invoked it.
    pub invoked: u128,
    /// When it returned.
    pub completed: u128,
}

/// What the checks found for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Server reads checked.
    pub server_reads: usize,
    /// Cached reads checked.
    pub cached_reads: usize,
    /// The largest time by which a cached read missed an acknowledged
    /// write (zero if none missed any).
    pub max_staleness: Duration,
    /// Every violation, described.
    pub violations: Vec<String>,
}

/// Checks the reads of one key against its writes. `reads` are in the
/// order each client issued them (clients run their operations one at a
/// time). Each check is a sort and a binary search per operation, so long
/// histories (millions of cached reads) check in seconds.
pub fn check(key: &str, writes: &[Write], reads: &[Read], stale_after: Duration) -> Verdict {
    let mut verdict = Verdict::default();
    let by_value: HashMap<&str, &Write> = writes.iter().map(|w| (w.value.as_str(), w)).collect();
    let committed: Vec<(&Write, u64)> = writes
        .iter()
        .filter_map(|w| w.tid.map(|t| (w, t)))
        .collect();
    // (ack time, tid) of acknowledged writes, by ack time, with the
    // highest TID acknowledged so far: "the latest write acknowledged
    // before t".
    let acked = Prefix::max(
        committed
            .iter()
            .filter_map(|(w, t)| w.acked.map(|a| (a, *t))),
    );
    // (tid, ack time) of acknowledged writes, by TID, with the earliest
    // acknowledgement among this TID and all later ones: "how long ago
    // was the first write after tid acknowledged".
    let mut by_tid: Vec<(u64, u128)> = committed
        .iter()
        .filter_map(|(w, t)| w.acked.map(|a| (*t, a)))
        .collect();
    by_tid.sort_unstable();
    let mut first_ack_after = by_tid.clone();
    for i in (0..first_ack_after.len().saturating_sub(1)).rev() {
        first_ack_after[i].1 = first_ack_after[i].1.min(first_ack_after[i + 1].1);
    }
    // (invoked, tid) of committed writes, by invocation, with the lowest
    // TID among this write and all invoked later.
    let mut invoked: Vec<(u128, u64)> = committed.iter().map(|(w, t)| (w.invoked, *t)).collect();
    invoked.sort_unstable();
    for i in (0..invoked.len().saturating_sub(1)).rev() {
        invoked[i].1 = invoked[i].1.min(invoked[i + 1].1);
    }
    let lowest_invoked_after = |at: u128| {
        let from = invoked.partition_point(|(i, _)| *i <= at);
        invoked.get(from).map(|(_, t)| *t)
    };

    // Acknowledged writes take TIDs in real-time order.
    for (w, tid) in &committed {
        if let Some((before, done)) = acked.at_or_before(w.invoked.saturating_sub(1)) {
            if before >= *tid {
                verdict.violations.push(format!(
                    "{key}: write {:?} (tid {tid}) began after a write with tid {before} was acknowledged (at {done} ns)",
                    w.value
                ));
            }
        }
    }

    let bound = stale_after.as_nanos() + Duration::from_millis(1).as_nanos();
    let mut server: Vec<(u128, u128, u64)> = Vec::new();
    let mut last: HashMap<usize, u64> = HashMap::new();
    for read in reads {
        let tid = match &read.value {
            None => Some(0),
            Some(value) => match by_value.get(value.as_str()) {
                Some(w) => {
                    if w.invoked > read.completed {
                        verdict.violations.push(format!(
                            "{key}: read {value:?} completed before its write began"
                        ));
                    }
                    if w.tid.is_none() {
                        verdict.violations.push(format!(
                            "{key}: read {value:?}, a write that never committed"
                        ));
                    }
                    w.tid
                }
                None => {
                    verdict
                        .violations
                        .push(format!("{key}: read {value:?}, a value nobody wrote"));
                    None
                }
            },
        };
        let Some(tid) = tid else { continue };
        // Missed writes: the first one after `tid` acknowledged before the
        // read began.
        let after = first_ack_after.partition_point(|(t, _)| *t <= tid);
        let missed = first_ack_after
            .get(after)
            .map(|(_, a)| *a)
            .filter(|a| *a < read.invoked);
        if read.cached {
            verdict.cached_reads += 1;
            if let Some(done) = missed {
                let lag = read.invoked - done;
                let as_duration = Duration::from_nanos(u64::try_from(lag).unwrap_or(u64::MAX));
                verdict.max_staleness = verdict.max_staleness.max(as_duration);
                if lag >= bound {
                    verdict.violations.push(format!(
                        "{key}: a cached read returned tid {tid}, missing a write acknowledged {as_duration:?} before it (stale_after {stale_after:?})"
                    ));
                }
            }
        } else {
            verdict.server_reads += 1;
            server.push((read.invoked, read.completed, tid));
            if missed.is_some() {
                verdict.violations.push(format!(
                    "{key}: a server read returned tid {tid} after a later write was acknowledged"
                ));
            }
        }
        if lowest_invoked_after(read.completed).is_some_and(|t| t < tid) {
            verdict.violations.push(format!(
                "{key}: a read returned tid {tid}, later than a write that began after it"
            ));
        }
        // Each client's reads never go back.
        let seen = last.entry(read.process).or_default();
        if tid < *seen {
            verdict.violations.push(format!(
                "{key}: client {} read tid {tid} after tid {seen}{}",
                read.process,
                if read.cached { " (from its cache)" } else { "" }
            ));
        }
        *seen = (*seen).max(tid);
    }

    // Server reads in real-time order: none older than one that
    // completed before it began.
    let done = Prefix::max(server.iter().map(|(_, completed, tid)| (*completed, *tid)));
    for (began, _, tid) in &server {
        if let Some((before, _)) = done.at_or_before(began.saturating_sub(1)) {
            if before > *tid {
                verdict.violations.push(format!(
                    "{key}: a server read returned tid {tid} after another had returned tid {before}"
                ));
            }
        }
    }
    verdict
}

/// Points in time with a value each, sorted by time, with the highest
/// value up to each point.
struct Prefix {
    points: Vec<(u128, u64)>,
}

impl Prefix {
    fn max(points: impl Iterator<Item = (u128, u64)>) -> Prefix {
        let mut points: Vec<(u128, u64)> = points.collect();
        points.sort_unstable();
        for i in 1..points.len() {
            points[i].1 = points[i].1.max(points[i - 1].1);
        }
        Prefix { points }
    }

    /// The highest value at or before `at`, and the time of the last
    /// point counted.
    fn at_or_before(&self, at: u128) -> Option<(u64, u128)> {
        let upto = self.points.partition_point(|(t, _)| *t <= at);
        upto.checked_sub(1)
            .map(|i| (self.points[i].1, self.points[i].0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(1);
    const MS: u128 = 1_000_000;

    fn write(value: &str, tid: Option<u64>, invoked: u128, acked: Option<u128>) -> Write {
        Write {
            value: value.into(),
            tid,
            invoked: invoked * MS,
            acked: acked.map(|a| a * MS),
        }
    }

    fn read(process: usize, value: Option<&str>, cached: bool, at: u128) -> Read {
        Read {
            process,
            value: value.map(Into::into),
            cached,
            invoked: at * MS,
            completed: (at + 1) * MS,
        }
    }

    fn writes() -> Vec<Write> {
        vec![
            write("a", Some(10), 0, Some(5)),
            write("b", Some(20), 10, Some(15)),
            write("lost", None, 20, None),
        ]
    }

    #[test]
    fn a_history_in_order_passes() {
        let reads = [
            read(0, None, false, 0),
            read(0, Some("a"), false, 6),
            read(1, Some("a"), true, 16),
            read(1, Some("b"), false, 30),
            read(0, Some("b"), true, 40),
        ];
        let verdict = check("k", &writes(), &reads, STALE);
        assert_eq!(verdict.violations, Vec::<String>::new());
        assert_eq!((verdict.server_reads, verdict.cached_reads), (3, 2));
        assert_eq!(verdict.max_staleness, Duration::from_millis(1));
    }

    #[test]
    fn a_server_read_older_than_an_acknowledged_write_fails() {
        let verdict = check("k", &writes(), &[read(0, Some("a"), false, 16)], STALE);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
    }

    #[test]
    fn a_cached_read_may_lag_by_less_than_stale_after_only() {
        let within = check("k", &writes(), &[read(0, Some("a"), true, 1014)], STALE);
        assert_eq!(within.violations, Vec::<String>::new());
        assert_eq!(within.max_staleness, Duration::from_millis(999));
        let past = check("k", &writes(), &[read(0, Some("a"), true, 1016)], STALE);
        assert_eq!(past.violations.len(), 1, "{:?}", past.violations);
    }

    #[test]
    fn reading_an_uncommitted_or_unwritten_value_fails() {
        let lost = check("k", &writes(), &[read(0, Some("lost"), false, 30)], STALE);
        assert_eq!(lost.violations.len(), 1, "{:?}", lost.violations);
        let invented = check("k", &writes(), &[read(0, Some("x"), true, 30)], STALE);
        assert_eq!(invented.violations.len(), 1, "{:?}", invented.violations);
    }

    #[test]
    fn a_read_from_the_future_fails() {
        let verdict = check("k", &writes(), &[read(0, Some("b"), false, 2)], STALE);
        assert!(!verdict.violations.is_empty());
    }

    #[test]
    fn server_reads_out_of_real_time_order_fail() {
        let mut w = writes();
        // b is in flight from 10 to 50: either order is fine for one read,
        // but not b and then a.
        w[1].acked = Some(50 * MS);
        let fine = [read(0, Some("a"), false, 12), read(1, Some("b"), false, 20)];
        assert_eq!(
            check("k", &w, &fine, STALE).violations,
            Vec::<String>::new()
        );
        let inverted = [read(0, Some("b"), false, 12), read(1, Some("a"), false, 20)];
        assert_eq!(check("k", &w, &inverted, STALE).violations.len(), 1);
    }

    #[test]
    fn a_client_going_back_in_time_fails_even_from_its_cache() {
        let mut w = writes();
        w[1].acked = Some(50 * MS);
        let reads = [read(0, Some("b"), false, 20), read(0, Some("a"), true, 30)];
        let verdict = check("k", &w, &reads, STALE);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
    }

    #[test]
    fn writes_acknowledged_out_of_tid_order_fail() {
        let mut w = writes();
        w[1].tid = Some(5);
        assert!(!check("k", &w, &[], STALE).violations.is_empty());
    }
}

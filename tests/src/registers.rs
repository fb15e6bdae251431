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
/// time).
pub fn check(key: &str, writes: &[Write], reads: &[Read], stale_after: Duration) -> Verdict {
    let mut verdict = Verdict::default();
    let by_value: HashMap<&str, &Write> = writes.iter().map(|w| (w.value.as_str(), w)).collect();
    let committed: Vec<(&Write, u64)> = writes
        .iter()
        .filter_map(|w| w.tid.map(|t| (w, t)))
        .collect();

    // Acknowledged writes take TIDs in real-time order.
    for (a, ta) in &committed {
        for (b, tb) in &committed {
            if a.acked.is_some_and(|done| done < b.invoked) && ta >= tb {
                verdict.violations.push(format!(
                    "{key}: write {:?} (tid {ta}) was acknowledged before write {:?} (tid {tb}) began",
                    a.value, b.value
                ));
            }
        }
    }

    let bound = stale_after.as_nanos() + Duration::from_millis(1).as_nanos();
    let mut placed = Vec::with_capacity(reads.len());
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
        placed.push((read, tid));
        if read.cached {
            verdict.cached_reads += 1;
        } else {
            verdict.server_reads += 1;
        }
        for (w, wt) in &committed {
            let missed = *wt > tid;
            if missed && !read.cached && w.acked.is_some_and(|done| done < read.invoked) {
                verdict.violations.push(format!(
                    "{key}: a server read returned tid {tid} after write {:?} (tid {wt}) was acknowledged",
                    w.value
                ));
            }
            if missed && read.cached {
                if let Some(done) = w.acked.filter(|done| *done < read.invoked) {
                    let staleness = read.invoked - done;
                    let as_duration =
                        Duration::from_nanos(u64::try_from(staleness).unwrap_or(u64::MAX));
                    verdict.max_staleness = verdict.max_staleness.max(as_duration);
                    if staleness >= bound {
                        verdict.violations.push(format!(
                            "{key}: a cached read returned tid {tid}, missing write {:?} (tid {wt}) acknowledged {as_duration:?} before it (stale_after {stale_after:?})",
                            w.value
                        ));
                    }
                }
            }
            if !missed && *wt != tid && w.invoked > read.completed {
                verdict.violations.push(format!(
                    "{key}: a read returned tid {tid}, later than write {:?} (tid {wt}) that began after it",
                    w.value
                ));
            }
        }
    }

    // Server reads in real-time order.
    let server: Vec<&(&Read, u64)> = placed.iter().filter(|(r, _)| !r.cached).collect();
    for (a, ta) in &server {
        for (b, tb) in &server {
            if a.completed < b.invoked && ta > tb {
                verdict.violations.push(format!(
                    "{key}: a server read returned tid {tb} after another had returned tid {ta}"
                ));
            }
        }
    }

    // Each client's reads never go back.
    let mut last: HashMap<usize, u64> = HashMap::new();
    for (read, tid) in &placed {
        let seen = last.entry(read.process).or_default();
        if tid < seen {
            verdict.violations.push(format!(
                "{key}: client {} read tid {tid} after tid {seen}{}",
                read.process,
                if read.cached { " (from its cache)" } else { "" }
            ));
        }
        *seen = (*seen).max(*tid);
    }
    verdict
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

//! The log read as history, for the change feed: where the commits after
//! a TID start, and what each record did to the keys.

use store_protocol::feed::{Change as FeedChange, ChangeOp};
use store_protocol::Tid;

use super::redo::{self, Change};
use super::Storage;
use crate::error::StorageError;

/// One record of the log as a feed sees it.
#[derive(Debug, Clone)]
pub struct Commits {
    /// Its log sequence number.
    pub lsn: u64,
    /// The last TID after it: once a feed has passed it, every commit up
    /// to this TID has been read.
    pub last_tid: Tid,
    /// What its commits did to keys, in TID order.
    pub changes: Vec<FeedChange>,
}

/// Where a feed of the commits after a TID starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this log sequence number.
    At(u64),
    /// The log no longer holds them: it starts after `oldest`.
    Compacted {
        /// The oldest TID a feed may start after.
        oldest: Tid,
    },
}

impl Storage {
    /// Where a feed of the commits after `from` starts reading the log:
    /// the first record whose last TID is past `from`, found by bisection
    /// (each probe reads one record), or `Compacted` if commits after
    /// `from` are no longer retained.
    pub fn history_start(&self, from: Tid) -> Result<Start, StorageError> {
        let (first, next) = {
            let wal = self.lock_wal();
            (wal.first_lsn(), wal.next_lsn())
        };
        let probe = |lsn: u64| -> Result<Option<(Tid, Tid)>, StorageError> {
            Ok(self
                .log_from(lsn, 0)?
                .first()
                .map(|r| (r.header.first_tid, r.header.last_tid)))
        };
        let oldest = match first.filter(|&first| first < next) {
            None => self.last_tid(),
            Some(first) => match probe(first)? {
                // The oldest record's commits start after this TID.
                Some((first_tid, _)) if first_tid > Tid::ZERO => Tid(first_tid.0 - 1),
                Some((_, last_tid)) => last_tid,
                // Recycled since: the history starts later than we know.
                None => self.last_tid(),
            },
        };
        if from < oldest {
            return Ok(Start::Compacted { oldest });
        }
        let (mut low, mut high) = (first.unwrap_or(next), next);
        while low < high {
            let mid = low + (high - low) / 2;
            match probe(mid)? {
                Some((_, last_tid)) if last_tid > from => high = mid,
                Some(_) => low = mid + 1,
                None => return Ok(Start::Compacted { oldest }),
            }
        }
        Ok(Start::At(low))
    }

    /// The records from `lsn` on (about `max_bytes` of them), decoded for
    /// a feed; `None` if the log no longer holds `lsn` (recycled under a
    /// slow reader).
    pub fn history_from(
        &self,
        lsn: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<Commits>>, StorageError> {
        // A feed that has caught up asks often: answer it without reading.
        if lsn >= self.lock_wal().next_lsn() {
            return Ok(Some(Vec::new()));
        }
        let records = self.log_from(lsn, max_bytes)?;
        if records.is_empty() {
            let next = self.lock_wal().next_lsn();
            return Ok((lsn >= next).then(Vec::new));
        }
        records
            .into_iter()
            .map(|record| {
                let changes = redo::decode(record.header.lsn, &record.body)?
                    .into_iter()
                    .filter_map(|change| match change {
                        Change::Put { key, tid, value } => Some(FeedChange {
                            tid,
                            key,
                            op: ChangeOp::Put(value),
                        }),
                        Change::Append { key, tid, suffix } => Some(FeedChange {
                            tid,
                            key,
                            op: ChangeOp::Append(suffix),
                        }),
                        Change::Delete { key, tid } => Some(FeedChange {
                            tid,
                            key,
                            op: ChangeOp::Delete,
                        }),
                        Change::Outcome { .. } | Change::Expire { .. } => None,
                    })
                    .collect();
                Ok(Commits {
                    lsn: record.header.lsn,
                    last_tid: record.header.last_tid,
                    changes,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()
            .map(Some)
    }
}

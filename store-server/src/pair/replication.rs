//! The primary's view of its backup, as a pure state machine in raft-rs's
//! `Ready` shape: the shell reports what happened (a batch became durable
//! here, the backup acknowledged, the witness recorded) and asks
//! [`Replication::ready`] what to do (answer the callers of some batches,
//! ask the witness to record something).
//!
//! The rule it keeps: a batch is answered only once it is durable on the
//! backup, or once the witness has durably recorded the backup as out of
//! sync (then the backup cannot be elected until it has caught up).

use std::collections::VecDeque;
use std::time::Duration;

use super::clock::Instant;

/// Where the backup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// The witness records the backup as out of sync: batches are answered
    /// once durable here (and still shipped to a backup catching up).
    Alone,
    /// The backup caught up; batches wait for it; the witness is being
    /// asked to record it in sync.
    Syncing,
    /// Recorded in sync: every answered batch is durable on the backup.
    InSync,
    /// The backup stopped acknowledging: nothing is answered until the
    /// witness has recorded it out of sync.
    Demoting,
}

/// What the shell should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Answer the callers of this many of the oldest waiting batches.
    pub release: usize,
    /// Ask the witness to record the backup as in sync (`true`) or not.
    pub ask_witness: Option<bool>,
}

/// The primary's replication state.
#[derive(Debug)]
pub struct Replication {
    state: SyncState,
    /// Batches not yet answered, in order: their LSN (`None` for a batch
    /// that changed nothing) and when they became durable here.
    waiting: VecDeque<(Option<u64>, Instant)>,
    durable: u64,
    acked: u64,
    joined: bool,
    asking: Option<bool>,
    timeout: Duration,
}

impl Replication {
    /// A new primary whose history ends at `durable`; its backup is out of
    /// sync until it joins and catches up (an election records only the
    /// new primary as in sync).
    pub fn new(durable: u64, timeout: Duration) -> Replication {
        Replication {
            state: SyncState::Alone,
            waiting: VecDeque::new(),
            durable,
            acked: 0,
            joined: false,
            asking: None,
            timeout,
        }
    }

    /// Where the backup stands.
    pub fn state(&self) -> SyncState {
        self.state
    }

    /// Batches durable here but not yet acknowledged by the backup.
    pub fn lag(&self) -> u64 {
        self.durable.saturating_sub(self.acked)
    }

    /// A batch became durable here (`lsn` is `None` if it changed nothing).
    pub fn durable(&mut self, lsn: Option<u64>, now: Instant) {
        if let Some(lsn) = lsn {
            self.durable = self.durable.max(lsn);
        }
        self.waiting.push_back((lsn, now));
    }

    /// A backup joined, its history ending at `lsn`.
    pub fn joined(&mut self, lsn: u64) {
        self.joined = true;
        self.acked = lsn.min(self.durable);
    }

    /// The backup's stream broke.
    pub fn lost(&mut self) {
        self.joined = false;
        if self.state == SyncState::Syncing {
            // The witness may already have recorded it in sync.
            self.state = SyncState::Demoting;
        }
    }

    /// The backup made everything up to `lsn` durable. (Batches are
    /// shipped before they are durable here, so an acknowledgement may
    /// come before [`Replication::durable`] for the same batch.)
    pub fn acked(&mut self, lsn: u64) {
        self.acked = self.acked.max(lsn);
    }

    /// The witness recorded what was asked.
    pub fn recorded(&mut self, in_sync: bool) {
        self.asking = None;
        self.state = match (self.state, in_sync) {
            (SyncState::Syncing, true) => SyncState::InSync,
            (SyncState::Demoting, false) => SyncState::Alone,
            (state, _) => state,
        };
    }

    /// The witness could not be asked; ask again.
    pub fn ask_failed(&mut self) {
        self.asking = None;
    }

    /// When the oldest batch the backup has not acknowledged became
    /// durable here.
    fn oldest_unacked(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .find(|(lsn, _)| lsn.is_some_and(|lsn| lsn > self.acked))
            .map(|(_, at)| *at)
    }

    /// When [`Replication::ready`] would give up on the backup if nothing
    /// is acknowledged before (quinn's `poll_timeout`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            SyncState::Syncing | SyncState::InSync => {
                self.oldest_unacked().map(|at| at + self.timeout)
            }
            SyncState::Alone | SyncState::Demoting => None,
        }
    }

    /// What to do at `now`.
    pub fn ready(&mut self, now: Instant) -> Ready {
        let overdue = self
            .oldest_unacked()
            .is_some_and(|at| now.duration_since(at) >= self.timeout);
        match self.state {
            SyncState::Alone if self.joined && self.acked >= self.durable => {
                self.state = SyncState::Syncing;
            }
            SyncState::Syncing | SyncState::InSync if overdue => {
                self.state = SyncState::Demoting;
            }
            _ => {}
        }
        let release = match self.state {
            SyncState::Alone => self.waiting.len(),
            SyncState::Syncing | SyncState::InSync => self
                .waiting
                .iter()
                .take_while(|(lsn, _)| lsn.is_none_or(|lsn| lsn <= self.acked))
                .count(),
            SyncState::Demoting => 0,
        };
        self.waiting.drain(..release);
        let want = match self.state {
            SyncState::Syncing => Some(true),
            SyncState::Demoting => Some(false),
            SyncState::Alone | SyncState::InSync => None,
        };
        let ask_witness = match (want, self.asking) {
            (Some(want), None) => {
                self.asking = Some(want);
                Some(want)
            }
            _ => None,
        };
        Ready {
            release,
            ask_witness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// A term whose backup joined at LSN 0 and was recorded in sync.
    fn in_sync(t0: Instant) -> Replication {
        let mut r = Replication::new(0, TIMEOUT);
        r.joined(0);
        assert_eq!(r.ready(t0).ask_witness, Some(true));
        r.recorded(true);
        assert_eq!(r.state(), SyncState::InSync);
        r
    }

    #[test]
    fn alone_answers_at_once_and_a_caught_up_backup_is_recorded_in_sync() {
        let t0 = Instant::now();
        let mut r = Replication::new(0, TIMEOUT);
        r.durable(Some(1), t0);
        r.durable(None, t0);
        assert_eq!(r.ready(t0).release, 2);
        r.joined(0);
        assert_eq!(r.ready(t0), Ready::default());
        r.acked(1);
        // Caught up: from now on batches wait for the backup.
        let ready = r.ready(t0);
        assert_eq!(ready.ask_witness, Some(true));
        assert_eq!(r.state(), SyncState::Syncing);
        r.durable(Some(2), t0);
        assert_eq!(r.ready(t0).release, 0);
        r.recorded(true);
        assert_eq!(r.state(), SyncState::InSync);
        r.acked(2);
        assert_eq!(r.ready(t0).release, 1);
    }

    #[test]
    fn a_silent_backup_is_recorded_out_of_sync_before_anyone_is_answered() {
        let t0 = Instant::now();
        let mut r = in_sync(t0);
        r.durable(Some(1), t0);
        r.durable(None, t0);
        assert_eq!(r.ready(t0 + TIMEOUT / 2).release, 0);
        let ready = r.ready(t0 + TIMEOUT);
        assert_eq!(
            ready,
            Ready {
                release: 0,
                ask_witness: Some(false)
            }
        );
        // Still waiting for the witness: no second ask, nothing answered.
        assert_eq!(r.ready(t0 + TIMEOUT * 3), Ready::default());
        r.ask_failed();
        assert_eq!(r.ready(t0 + TIMEOUT * 3).ask_witness, Some(false));
        r.recorded(false);
        assert_eq!(r.state(), SyncState::Alone);
        assert_eq!(r.ready(t0 + TIMEOUT * 3).release, 2);
    }

    #[test]
    fn a_late_answer_to_an_older_question_changes_nothing() {
        let t0 = Instant::now();
        let mut r = Replication::new(0, TIMEOUT);
        r.joined(0);
        assert_eq!(r.ready(t0).ask_witness, Some(true));
        r.lost();
        assert_eq!(r.state(), SyncState::Demoting);
        // The in-sync question is still out: wait for its answer first.
        assert_eq!(r.ready(t0).ask_witness, None);
        r.recorded(true);
        assert_eq!(r.state(), SyncState::Demoting);
        assert_eq!(r.ready(t0).ask_witness, Some(false));
        r.recorded(false);
        assert_eq!(r.state(), SyncState::Alone);
    }

    #[test]
    fn an_acknowledgement_may_come_before_the_batch_is_durable_here() {
        let t0 = Instant::now();
        let mut r = in_sync(t0);
        r.acked(1);
        assert_eq!(r.ready(t0).release, 0);
        r.durable(Some(1), t0);
        assert_eq!(r.ready(t0).release, 1);
        assert_eq!(r.lag(), 0);
    }

    #[test]
    fn batches_are_answered_in_order() {
        let t0 = Instant::now();
        let mut r = in_sync(t0);
        r.durable(Some(1), t0);
        r.durable(None, t0);
        r.durable(Some(2), t0);
        r.acked(1);
        assert_eq!(r.ready(t0).release, 2);
        assert_eq!(r.lag(), 1);
        r.acked(2);
        assert_eq!(r.ready(t0).release, 1);
    }
}

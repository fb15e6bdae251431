//! Size limits, enforced by the server and known to clients from `Welcome`.

use serde::{Deserialize, Serialize};

use crate::error::{LimitKind, WireError};
use crate::message::{CommitRequest, Write};

/// Default largest key: 4 KiB.
pub const DEFAULT_MAX_KEY_BYTES: u32 = 4 * 1024;
/// Default largest value: 4 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: u32 = 4 * 1024 * 1024;
/// Default largest frame: 8 MiB, so that one maximal value plus its key and
/// envelope always fits.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;
/// Default largest number of writes plus reads in one transaction.
pub const DEFAULT_MAX_OPS_PER_TXN: u32 = 10_000;
/// Default most bytes of new values one transaction may create: 64 MiB.
pub const DEFAULT_MAX_TXN_BYTES: u32 = 64 * 1024 * 1024;

/// The limits a server enforces. Every field is a hard upper bound, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key in bytes (default 4 KiB).
    pub max_key_bytes: u32,
    /// Largest value in bytes (default 4 MiB).
    pub max_value_bytes: u32,
    /// Largest frame body in bytes (default 8 MiB); checked before allocating.
    pub max_frame_bytes: u32,
    /// Most reads plus writes in one transaction (default 10,000).
    pub max_ops_per_txn: u32,
    /// Most bytes of new values one transaction may create (default
    /// 64 MiB), counting each written key's final value once: an `Append`
    /// costs the whole value it makes, however small its own bytes.
    pub max_txn_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_ops_per_txn: DEFAULT_MAX_OPS_PER_TXN,
            max_txn_bytes: DEFAULT_MAX_TXN_BYTES,
        }
    }
}

impl Limits {
    /// Refuses a key longer than `max_key_bytes`.
    pub fn check_key(&self, key: &[u8]) -> Result<(), WireError> {
        check(LimitKind::Key, key.len(), self.max_key_bytes)
    }

    /// Refuses a value longer than `max_value_bytes`.
    pub fn check_value(&self, value: &[u8]) -> Result<(), WireError> {
        self.check_value_len(value.len())
    }

    /// Refuses a value length beyond `max_value_bytes`.
    pub fn check_value_len(&self, len: usize) -> Result<(), WireError> {
        check(LimitKind::Value, len, self.max_value_bytes)
    }

    /// Refuses a transaction whose new values total more than
    /// `max_txn_bytes`.
    pub fn check_txn_bytes(&self, bytes: usize) -> Result<(), WireError> {
        check(LimitKind::TxnBytes, bytes, self.max_txn_bytes)
    }

    /// Checks every key, value and the operation count of a commit.
    pub fn check_commit(&self, commit: &CommitRequest) -> Result<(), WireError> {
        check(
            LimitKind::Ops,
            commit.read_set.len() + commit.writes.len(),
            self.max_ops_per_txn,
        )?;
        for read in &commit.read_set {
            self.check_key(&read.key)?;
        }
        for write in &commit.writes {
            self.check_key(write.key())?;
            if let Write::Put { value, .. } | Write::Append { value, .. } = write {
                self.check_value(value)?;
            }
        }
        Ok(())
    }
}

fn check(what: LimitKind, size: usize, limit: u32) -> Result<(), WireError> {
    if size > limit as usize {
        return Err(WireError::TooLarge {
            what,
            size: size as u64,
            limit: u64::from(limit),
        });
    }
    Ok(())
}

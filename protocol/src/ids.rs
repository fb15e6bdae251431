//! Identifiers that cross the wire: TIDs, epochs and transaction ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A commit's transaction id: strictly increasing over the whole history of a
/// store, restarts and failovers included. `Tid(0)` means "nothing yet"; every
/// key remembers the TID that last wrote it (its *serial*).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Tid(pub u64);

impl Tid {
    /// The TID before any commit.
    pub const ZERO: Tid = Tid(0);

    /// The TID that follows this one.
    pub fn next(self) -> Tid {
        Tid(self.0 + 1)
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A term of primaryship in an HA pair. Every message that can only come from
/// a primary carries it, and every node rejects lower epochs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The space (upper 64 bits) a `client_id` lies in: see
/// `client_id_space` (feature `tls`).
pub fn space_of(client_id: u128) -> u64 {
    (client_id >> 64) as u64
}

/// Identifies one transaction of one client instance, fixed before the first
/// send and resent unchanged on every retry.
///
/// Printed (and parsed) as `<client_id as 32 hex digits>:<seq>`:
///
/// ```
/// use store_protocol::TxnId;
/// let id = TxnId { client_id: 0xabc, seq: 7 };
/// assert_eq!(id.to_string(), "00000000000000000000000000000abc:7");
/// assert_eq!(id.to_string().parse::<TxnId>().unwrap(), id);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    /// Random per client instance.
    pub client_id: u128,
    /// Counts the client's transactions from 1.
    pub seq: u64,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}:{}", self.client_id, self.seq)
    }
}

/// Why a string is not a [`TxnId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transaction id {0:?}: expected <32 hex digits>:<seq>")]
pub struct ParseTxnIdError(String);

impl FromStr for TxnId {
    type Err = ParseTxnIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseTxnIdError(s.to_owned());
        let (client, seq) = s.split_once(':').ok_or_else(bad)?;
        if client.len() != 32 {
            return Err(bad());
        }
        Ok(TxnId {
            client_id: u128::from_str_radix(client, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// The role a server plays, as reported in `Welcome`, `Pong` and `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A single server with no replication: serves reads and writes.
    Standalone,
    /// The writable member of an HA pair.
    Primary,
    /// The standby member of an HA pair: refuses writes with `NotPrimary`.
    Backup,
    /// The third vote of an HA pair: holds no data, only its votes.
    Witness,
}

impl Role {
    /// Whether this role accepts commits.
    pub fn is_writable(self) -> bool {
        matches!(self, Role::Standalone | Role::Primary)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Witness => "witness",
        })
    }
}

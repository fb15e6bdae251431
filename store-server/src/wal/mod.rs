//! The write-ahead log: the store's history on disk.
//!
//! Every batch that changes anything becomes one record, appended and
//! fsynced before any answer rests on it; the index (redb) is applied from
//! the same batch without an fsync of its own and made durable only at
//! checkpoints, so a commit costs one `fdatasync` of a few KiB in a
//! preallocated file instead of redb's scattered pages. Start-up replays
//! the records after the index's checkpoint.
//!
//! * `format`: the bytes of segments and records, field by field;
//! * `log`: opening (torn tail cut, damage refused), appending,
//!   checkpoints, retention and recycling;
//! * `disk`: the crash seam every file goes through.

mod disk;
mod format;
mod log;
#[cfg(any(test, feature = "crash-seam"))]
pub mod sim;
#[cfg(test)]
mod tests;

pub use disk::{Disk, OsDisk};
pub use format::RecordHeader;
pub use log::{Record, Wal, WalConfig};

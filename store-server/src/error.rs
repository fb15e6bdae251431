//! The server's one error type.

/// Everything that can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The storage engine failed (disk full, corruption, locked by another process).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A certificate or key could not be made or used.
    #[error("tls: {0}")]
    Tls(String),
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// A backup file is damaged or not a backup; nothing was kept.
    #[error("{file}: {source}")]
    Backup {
        /// The file.
        file: String,
        /// What is wrong with it.
        source: store_protocol::BackupError,
    },
}

/// A failure of the storage engine (boxed, because redb's error is large),
/// or a batch refused before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// redb failed.
    #[error(transparent)]
    Engine(Box<redb::Error>),
    /// The write-ahead log could not be read or written (no space, an I/O
    /// error, a failed fsync).
    #[error("the log: {context}: {source}")]
    Log {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A batch stamped with an epoch older than this node has accepted: it
    /// comes from a deposed primary. Nothing was written.
    #[error("fenced: batch of epoch {batch} is older than accepted epoch {accepted}")]
    Fenced {
        /// The batch's epoch.
        batch: u64,
        /// The epoch this node has accepted.
        accepted: u64,
    },
    /// A replicated batch did not land where it did on the primary: the
    /// histories differ. Nothing was written.
    #[error("diverged: {0}")]
    Diverged(String),
    /// The store file exists but cannot be what Zeolite wrote: empty,
    /// truncated, zeroed, or not a store at all. Nothing was changed.
    #[error(
        "{path} is damaged: {detail}. Restore it from a backup, or move it away \
         (a pair member then starts with --join and copies the primary's store)"
    )]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process holds the store open (a server already running on
    /// this data directory).
    #[error(
        "{path} is in use by another process: is a server already running on this data directory?"
    )]
    InUse {
        /// The file.
        path: String,
    },
    /// The store belongs to another cluster than the one it was asked to
    /// join.
    #[error("this store belongs to cluster {ours:016x}, not {theirs:016x}")]
    OtherCluster {
        /// The store's cluster.
        ours: u64,
        /// The cluster it met.
        theirs: u64,
    },
    /// The store belongs to another member of its cluster.
    #[error(
        "this store belongs to --cluster member {ours} (counting from 0), not {theirs}: \
         is --data-dir or --listen swapped with the other node's?"
    )]
    OtherNode {
        /// The member the store belongs to.
        ours: u64,
        /// The member this node is configured as.
        theirs: u64,
    },
}

impl StorageError {
    /// The store file at `path` is damaged: `detail` says how.
    pub(crate) fn damaged(path: &std::path::Path, detail: impl Into<String>) -> StorageError {
        StorageError::Damaged {
            path: path.display().to_string(),
            detail: detail.into(),
        }
    }

    /// Data on disk that cannot be what Zeolite wrote.
    pub(crate) fn corrupt(detail: String) -> StorageError {
        StorageError::Engine(Box::new(redb::Error::Corrupted(detail)))
    }
}

macro_rules! storage_error_from {
    ($($source:ty),* $(,)?) => {
        $(impl From<$source> for StorageError {
            fn from(e: $source) -> Self {
                StorageError::Engine(Box::new(e.into()))
            }
        })*
    };
}

storage_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

impl ServerError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<store_protocol::pem::PemError> for ServerError {
    fn from(e: store_protocol::pem::PemError) -> Self {
        ServerError::Tls(e.to_string())
    }
}

impl From<rcgen::Error> for ServerError {
    fn from(e: rcgen::Error) -> Self {
        ServerError::Tls(format!("generating development certificates: {e}"))
    }
}

impl From<rustls::Error> for ServerError {
    fn from(e: rustls::Error) -> Self {
        ServerError::Tls(e.to_string())
    }
}

//! Opening the store's file, and stopping when the disk refuses a write.

use std::path::Path;

use redb::Database;

use crate::error::StorageError;

/// Opens the redb file at `path`, creating it if it does not exist, and
/// says whether it existed. A file that exists but is empty, truncated or
/// otherwise damaged is refused with [`StorageError::Damaged`], never
/// taken as new. The file is made readable by its owner only.
pub fn open_database(path: &Path) -> Result<(Database, bool), StorageError> {
    let damaged = |detail: String| StorageError::damaged(path, detail);
    let exists = match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(damaged(
                "the file is empty (0 bytes), and a new store is never made over one".into(),
            ))
        }
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(damaged(e.to_string())),
    };
    // redb panics on some damaged files: a panic here is a damaged
    // store, reported as one (and not also as a crash by the hook).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| {
        if exists {
            Database::open(path)
        } else {
            Database::create(path)
        }
    });
    std::panic::set_hook(hook);
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(StorageError::InUse {
                path: path.display().to_string(),
            })
        }
        Ok(Err(e)) => return Err(damaged(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the storage engine panicked".into());
            return Err(damaged(what));
        }
    };
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| damaged(format!("restricting its permissions: {e}")))?;
    }
    Ok((db, exists))
}

/// Exit status of a node that stopped because its disk refused a write
/// (`EX_IOERR`).
pub const EXIT_DISK_FAILED: i32 = 74;

/// A write the disk refused (no space, an I/O error, a failed fsync):
/// stop at once. After a failed write the engine's state and the disk's
/// may differ, so no answer may rest on this store any more; a standalone
/// server is restarted once the disk is fixed (clients resend, and the
/// outcome table answers every resend exactly once), and in a pair the
/// backup, which holds everything acknowledged, takes over.
pub fn fail_stop(error: &StorageError) -> ! {
    tracing::error!(
        %error,
        exit = EXIT_DISK_FAILED,
        "the disk refused a write; stopping. Free space or fix the disk, then restart"
    );
    std::process::exit(EXIT_DISK_FAILED)
}

//! The crash seam: every file of the log goes through [`Disk`], and every
//! file's bytes through redb's [`StorageBackend`] (the index's seam too).
//! [`OsDisk`] is the real directory; the crash-consistency suite swaps in a
//! disk that tears writes, fails them, and loses what was not synced.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::PathBuf;

pub use redb::StorageBackend;

/// A directory of files that can be listed, opened, renamed and removed.
/// Renames, removals and creations are durable when the call returns.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens `name` for reading and writing, creating it empty if missing.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// A real directory, created (owner-only) if missing.
#[derive(Debug)]
pub struct OsDisk {
    dir: PathBuf,
}

impl OsDisk {
    /// The directory `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<OsDisk> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(OsDisk { dir })
    }

    /// Makes the directory's entries durable (after a create, rename or
    /// removal).
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Disk for OsDisk {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
        let path = self.dir.join(name);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        if !existed {
            self.sync_dir()?;
        }
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))?;
        self.sync_dir()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))?;
        self.sync_dir()
    }
}

/// A real file: positioned reads and writes, `fdatasync`.
#[derive(Debug)]
struct OsFile(File);

impl StorageBackend for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.0.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

//! A disk for crash tests: files in memory that remember what was synced,
//! lose the rest at a simulated power cut (some unsynced writes kept, some
//! dropped, some torn), and fail chosen operations with `EIO` or `ENOSPC`.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::disk::{Disk, StorageBackend};

/// An in-memory directory with power cuts and injected faults. Clones share
/// the same files.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<String, Arc<Mutex<FileState>>>,
    /// Bumped at every power cut: handles from before it fail.
    boot: u64,
    /// Operations (writes, syncs, length changes) until one fails.
    fail_in: Option<u64>,
    /// The failure: `ENOSPC` or `EIO`.
    fail_with_enospc: bool,
    /// Whether a failure happened since the last power cut.
    failed: bool,
}

#[derive(Debug, Default, Clone)]
struct FileState {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

/// Bytes a torn write keeps whole: a disk sector.
const SECTOR: usize = 512;

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens `name` as redb's storage backend (the index's file).
    pub fn backend(&self, name: &str) -> SimFile {
        let mut state = self.lock();
        let boot = state.boot;
        let file = state.files.entry(name.to_string()).or_default().clone();
        SimFile {
            disk: self.clone(),
            file,
            boot,
        }
    }

    /// Makes the `ops`-th write, sync or length change from now fail, with
    /// `ENOSPC` if `enospc`, else `EIO`; `None` clears it.
    pub fn fail_in(&self, ops: Option<u64>, enospc: bool) {
        let mut state = self.lock();
        state.fail_in = ops;
        state.fail_with_enospc = enospc;
    }

    /// Whether an injected failure happened since the last power cut.
    pub fn failed(&self) -> bool {
        self.lock().failed
    }

    /// A power cut: every file keeps what was synced, plus, from `seed`,
    /// some of the writes since (each kept whole, dropped, or torn: any of
    /// its sectors kept). Handles opened before it fail from now on.
    pub fn power_cut(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = self.lock();
        state.boot += 1;
        state.fail_in = None;
        state.failed = false;
        for file in state.files.values() {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let mut survived = file.durable.clone();
            for (offset, data) in std::mem::take(&mut file.pending) {
                match rng.gen_range(0..3) {
                    0 => {}
                    1 => write_into(&mut survived, offset, &data),
                    // Torn: each sector of the write reached the disk or
                    // not, in any order.
                    _ => {
                        for (i, sector) in data.chunks(SECTOR).enumerate() {
                            if rng.gen_bool(0.5) {
                                write_into(&mut survived, offset + (i * SECTOR) as u64, sector);
                            }
                        }
                    }
                }
            }
            file.current = survived.clone();
            file.durable = survived;
        }
    }

    /// Flips one bit of `name`'s durable bytes at `offset` (damage on disk).
    pub fn flip_bit(&self, name: &str, offset: usize) {
        let state = self.lock();
        if let Some(file) = state.files.get(name) {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let FileState {
                current, durable, ..
            } = &mut *file;
            for bytes in [current, durable] {
                if let Some(byte) = bytes.get_mut(offset) {
                    *byte ^= 1;
                }
            }
        }
    }

    /// `Err` for a handle opened before the last power cut.
    fn alive(&self, boot: u64) -> io::Result<()> {
        if self.lock().boot != boot {
            return Err(io::Error::other("the power was cut"));
        }
        Ok(())
    }

    /// Counts an operation; `Err` if it is the one chosen to fail.
    fn operate(&self, boot: u64) -> io::Result<()> {
        self.alive(boot)?;
        let mut state = self.lock();
        match state.fail_in {
            Some(0) => {
                state.fail_in = None;
                state.failed = true;
                Err(if state.fail_with_enospc {
                    io::Error::from_raw_os_error(28)
                } else {
                    io::Error::from_raw_os_error(5)
                })
            }
            Some(n) => {
                state.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn write_into(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
}

impl Disk for SimDisk {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(self.backend(name)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        let file = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.files.insert(to.to_string(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.lock().files.remove(name);
        Ok(())
    }
}

/// One file of a [`SimDisk`].
#[derive(Debug)]
pub struct SimFile {
    disk: SimDisk,
    file: Arc<Mutex<FileState>>,
    boot: u64,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, FileState> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageBackend for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.disk.alive(self.boot)?;
        Ok(self.lock().current.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.disk.alive(self.boot)?;
        let file = self.lock();
        let start = offset as usize;
        file.current
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.operate(self.boot)?;
        let mut file = self.lock();
        // Length changes are metadata: durable at once in this model.
        file.current.resize(len as usize, 0);
        file.durable.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.disk.operate(self.boot)?;
        let mut file = self.lock();
        let FileState {
            current,
            durable,
            pending,
        } = &mut *file;
        for (offset, data) in pending.drain(..) {
            write_into(durable, offset, &data);
        }
        durable.resize(current.len(), 0);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.disk.operate(self.boot)?;
        let mut file = self.lock();
        write_into(&mut file.current, offset, data);
        file.pending.push((offset, data.to_vec()));
        Ok(())
    }
}

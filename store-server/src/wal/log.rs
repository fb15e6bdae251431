//! The log itself: segments scanned at open (a torn tail cut off, damage
//! before it refused), records appended and fsynced one batch at a time,
//! full segments recycled once a checkpoint and the retention window are
//! past them.

use std::collections::VecDeque;
use std::sync::Arc;

use super::disk::{Disk, StorageBackend};
use super::format::{
    encode_record, parse_record_header, parse_segment_header, record_crc, segment_header,
    ParsedHeader, RecordHeader, RECORD_HEADER, SEGMENT_HEADER,
};
use crate::error::StorageError;

/// Sizes that shape the log.
#[derive(Debug, Clone, Copy)]
pub struct WalConfig {
    /// Bytes of one segment file, preallocated (zero-filled) when made.
    pub segment_bytes: u64,
    /// Log bytes after which the index is made durable (a checkpoint), so
    /// that a restart replays at most about this much.
    pub checkpoint_bytes: u64,
    /// Log bytes kept after a checkpoint for catch-up and the change log.
    pub retain_bytes: u64,
    /// How long a full segment is kept after a checkpoint passed it,
    /// counted from when it filled (or from the last start): the log is
    /// bounded by `retain_bytes` and by this, whichever retires first.
    pub retain_age: std::time::Duration,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            segment_bytes: 32 << 20,
            checkpoint_bytes: 64 << 20,
            retain_bytes: 256 << 20,
            retain_age: std::time::Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// One record read back: its header and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it sits in the history.
    pub header: RecordHeader,
    /// The storage's redo body.
    pub body: Vec<u8>,
}

/// A segment that takes no more records.
#[derive(Debug)]
struct Sealed {
    name: String,
    first_lsn: u64,
    marks: Marks,
    /// When it filled (or when this process found it).
    sealed_at: std::time::SystemTime,
    last_lsn: u64,
    bytes: u64,
}

/// The segment records are appended to.
#[derive(Debug)]
struct Active {
    name: String,
    file: Box<dyn StorageBackend>,
    first_lsn: u64,
    marks: Marks,
    /// Where the next record goes.
    end: u64,
}

/// The write-ahead log: one writer, records in LSN order.
#[derive(Debug)]
pub struct Wal {
    disk: Arc<dyn Disk>,
    config: WalConfig,
    generation: u64,
    sealed: VecDeque<Sealed>,
    active: Option<Active>,
    /// Retired segment files, recycled before new ones are made.
    spare: Vec<String>,
    next_lsn: u64,
    /// An append failed: refuse the rest.
    broken: bool,
    buf: Vec<u8>,
}

/// Where some records of a segment start, `(lsn, offset)` in LSN order:
/// reading from an LSN starts at the mark before it, not at the segment's
/// start.
type Marks = Vec<(u64, u64)>;

/// A segment's records are marked every this many LSNs (and its first).
const MARK_EVERY: u64 = 64;

/// Whether the record `lsn` at `offset` gets a mark.
fn mark(marks: &mut Marks, lsn: u64, offset: u64) {
    if marks.is_empty() || lsn % MARK_EVERY == 0 {
        marks.push((lsn, offset));
    }
}

/// Spare segments kept for recycling; more are removed.
const SPARES: usize = 2;

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Log { context, source }
}

impl Wal {
    /// Opens the log of history `generation` in `disk`, handing every
    /// retained record to `each` in LSN order. Segments of other
    /// generations are set aside for recycling. A torn tail (a last record
    /// cut short or failing its checksum, nothing valid after it) is cut
    /// off; anything invalid with valid records after it is
    /// [`StorageError::Damaged`], naming the file and offset.
    /// `next_lsn` is where an empty log starts.
    pub fn open(
        disk: Arc<dyn Disk>,
        generation: u64,
        next_lsn: u64,
        config: WalConfig,
        mut each: impl FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<Wal, StorageError> {
        let mut names: Vec<String> = disk
            .list()
            .map_err(io_error("listing the log".into()))?
            .into_iter()
            .filter(|name| name.len() == 24 && name.ends_with(".wal"))
            .collect();
        names.sort();
        let mut wal = Wal {
            disk,
            config,
            generation,
            sealed: VecDeque::new(),
            active: None,
            spare: Vec::new(),
            next_lsn,
            broken: false,
            buf: Vec::new(),
        };
        let mut ours = Vec::new();
        for name in names {
            let file = wal.open_file(&name)?;
            let len = file_len(&*file, &name)?;
            let head = read_upto(&*file, len, 0, SEGMENT_HEADER as usize, &name)?;
            match parse_segment_header(&head) {
                Some((g, first)) if g == generation && name == segment_name(first) => {
                    ours.push((name, file, first))
                }
                // Another history's, a retired one (zeroed), or a roll
                // that never took a record.
                Some(_) => wal.spare.push(name),
                None if head.iter().all(|&b| b == 0) => wal.spare.push(name),
                None => {
                    // A damaged header on a segment that holds this
                    // history's records would silently drop them.
                    let any = |_: u64| true;
                    if wal
                        .record_at(&*file, SEGMENT_HEADER, len, &name, any)?
                        .is_some()
                    {
                        return Err(StorageError::Damaged {
                            path: name,
                            detail: "the segment's header is damaged, and it holds records of \
                                     this history"
                                .into(),
                        });
                    }
                    wal.spare.push(name);
                }
            }
        }
        for (name, file, first) in ours {
            if wal.active.is_some() && first < wal.next_lsn {
                wal.spare.push(name);
                continue;
            }
            if wal.active.is_none() {
                wal.next_lsn = first;
            } else if first != wal.next_lsn {
                let (last, end) = wal
                    .active
                    .as_ref()
                    .map_or((String::new(), 0), |a| (a.name.clone(), a.end));
                return Err(damage(
                    &last,
                    end,
                    &format!("the log goes on at LSN {first} in {name}"),
                ));
            }
            if let Some(active) = wal.active.take() {
                wal.seal(active);
            }
            let (end, marks) = wal.scan(&name, &*file, &mut each)?;
            wal.active = Some(Active {
                name,
                file,
                first_lsn: first,
                marks,
                end,
            });
        }
        Ok(wal)
    }

    /// Reads the records of one segment into `each`; returns where they
    /// end (a torn record there is overwritten by the next append), and
    /// the segment's marks.
    fn scan(
        &mut self,
        name: &str,
        file: &dyn StorageBackend,
        each: &mut impl FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<(u64, Marks), StorageError> {
        let len = file_len(file, name)?;
        let mut offset = SEGMENT_HEADER;
        let mut marks = Marks::new();
        let mut group = None;
        loop {
            match self.read_record(file, offset, len, name, &mut group)? {
                Some(record) => {
                    let size = (RECORD_HEADER + record.body.len()) as u64;
                    mark(&mut marks, record.header.lsn, offset);
                    self.next_lsn = record.header.lsn.saturating_add(1);
                    offset += size;
                    each(record)?;
                }
                None => {
                    // A later group was written only after this record was
                    // fsynced: a valid record of one means the record was
                    // damaged since. Valid records of its own group mean
                    // the group was torn before its fsync (never
                    // acknowledged): the log ends here.
                    if let Some(later) = self.later_group_after(file, offset, len, name)? {
                        return Err(damage(
                            name,
                            offset,
                            &format!("a valid record follows at offset {later}"),
                        ));
                    }
                    return Ok((offset, marks));
                }
            }
        }
    }

    /// The record at `offset` if it is the next one of this history.
    /// The next record of this history at `offset`: the next LSN, and
    /// either the first of a group or one continuing `group` (its first
    /// LSN and nonce), which it then continues.
    fn read_record(
        &self,
        file: &dyn StorageBackend,
        offset: u64,
        len: u64,
        name: &str,
        group: &mut Option<(u64, u32)>,
    ) -> Result<Option<Record>, StorageError> {
        let Some((record, parsed)) =
            self.record_at(file, offset, len, name, |lsn| lsn == self.next_lsn)?
        else {
            return Ok(None);
        };
        let this = (parsed.group_first, parsed.nonce);
        if parsed.group_first != parsed.header.lsn && *group != Some(this) {
            // Left over from a group torn before its fsync.
            return Ok(None);
        }
        *group = Some(this);
        Ok(Some(record))
    }

    /// The record of this history at `offset` whose LSN is `wanted`, with
    /// its header as read.
    fn record_at(
        &self,
        file: &dyn StorageBackend,
        offset: u64,
        len: u64,
        name: &str,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<Option<(Record, ParsedHeader)>, StorageError> {
        let bytes = read_upto(file, len, offset, RECORD_HEADER, name)?;
        let Some(parsed) = parse_record_header(self.generation, &bytes) else {
            return Ok(None);
        };
        let body_start = offset + RECORD_HEADER as u64;
        // A damaged length never allocates more than the file holds.
        let fits = body_start
            .checked_add(u64::from(parsed.body_len))
            .is_some_and(|end| end <= len);
        if !wanted(parsed.header.lsn) || !fits {
            return Ok(None);
        }
        let body = read_upto(file, len, body_start, parsed.body_len as usize, name)?;
        if record_crc(self.generation, &bytes[8..48], &body) != parsed.crc {
            return Ok(None);
        }
        let record = Record {
            header: parsed.header,
            body,
        };
        Ok(Some((record, parsed)))
    }

    /// The offset of a valid record of this history past `from` in a group
    /// that starts after the next LSN, if any: the mark of damage rather
    /// than of a torn tail. Only headers whose own checksum holds have
    /// their body read.
    fn later_group_after(
        &self,
        file: &dyn StorageBackend,
        from: u64,
        len: u64,
        name: &str,
    ) -> Result<Option<u64>, StorageError> {
        const WINDOW: u64 = 1 << 20;
        let next = self.next_lsn;
        let mut start = from.saturating_add(1);
        while start + RECORD_HEADER as u64 <= len {
            let window = read_upto(
                file,
                len,
                start,
                (WINDOW + RECORD_HEADER as u64) as usize,
                name,
            )?;
            let last = window.len().saturating_sub(RECORD_HEADER);
            for at in 0..=last.min(WINDOW as usize) {
                let Some(parsed) = parse_record_header(self.generation, &window[at..]) else {
                    continue;
                };
                if parsed.header.lsn < next || parsed.group_first <= next {
                    continue;
                }
                let offset = start + at as u64;
                if self
                    .record_at(file, offset, len, name, |lsn| lsn > next)?
                    .is_some()
                {
                    return Ok(Some(offset));
                }
            }
            start += WINDOW;
        }
        Ok(None)
    }

    /// Makes the first segment if the log has none yet.
    pub fn start(&mut self) -> Result<(), StorageError> {
        match self.active {
            Some(_) => Ok(()),
            None => self.roll(self.next_lsn),
        }
    }

    /// Whether the log holds a segment of its history (one always remains
    /// once the history has begun).
    pub fn holds_history(&self) -> bool {
        self.active.is_some()
    }

    /// The LSN of the oldest record retained, if any segment is.
    pub fn first_lsn(&self) -> Option<u64> {
        self.sealed
            .front()
            .map(|s| s.first_lsn)
            .or_else(|| self.active.as_ref().map(|a| a.first_lsn))
    }

    /// The LSN the next record must carry.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The records from `lsn` on, in order, up to about `max_bytes` of
    /// bodies (at least one, if any): what a backup catching up is sent.
    /// Empty if the log no longer holds `lsn` (or does not yet).
    pub fn read_from(&self, lsn: u64, max_bytes: usize) -> Result<Vec<Record>, StorageError> {
        let mut segments: Vec<(&str, u64, &Marks)> = self
            .sealed
            .iter()
            .map(|s| (s.name.as_str(), s.first_lsn, &s.marks))
            .collect();
        segments.extend(
            self.active
                .as_ref()
                .map(|a| (a.name.as_str(), a.first_lsn, &a.marks)),
        );
        let Some(start) = segments.iter().rposition(|&(_, first, _)| first <= lsn) else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut expected = segments[start].1;
        for (index, &(name, first, marks)) in segments[start..].iter().enumerate() {
            if first != expected {
                break;
            }
            let file = self.open_file(name)?;
            let len = file_len(&*file, name)?;
            let mut offset = SEGMENT_HEADER;
            if index == 0 {
                // From the last mark at or before `lsn`.
                if let Some(&(marked, at)) = marks.iter().rev().find(|&&(l, _)| l <= lsn) {
                    (expected, offset) = (marked, at);
                }
            }
            while expected < self.next_lsn {
                let wanted = |l: u64| l == expected;
                let Some((record, _)) = self.record_at(&*file, offset, len, name, wanted)? else {
                    break;
                };
                offset += (RECORD_HEADER + record.body.len()) as u64;
                expected += 1;
                if record.header.lsn >= lsn {
                    bytes += record.body.len();
                    records.push(record);
                    if bytes >= max_bytes {
                        return Ok(records);
                    }
                }
            }
        }
        Ok(records)
    }

    /// Whether an append failed: the log takes no more until a restart.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends records (consecutive LSNs from [`Wal::next_lsn`]) and makes
    /// them durable with one `fdatasync` before returning. After a failed
    /// append the log refuses every later one: what reached the disk is
    /// unknown until a restart reads it back.
    pub fn append(&mut self, records: &[(RecordHeader, &[u8])]) -> Result<(), StorageError> {
        if self.broken {
            return Err(StorageError::Log {
                context: "appending to the log after it failed".into(),
                source: std::io::Error::other("restart to recover"),
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let nonce = rand::random::<u32>();
        let mut lsn = self.next_lsn;
        for (header, body) in records {
            if header.lsn != lsn {
                return Err(StorageError::Log {
                    context: format!("appending LSN {} where {lsn} is due", header.lsn),
                    source: std::io::Error::other("out of order"),
                });
            }
            encode_record(
                self.generation,
                header,
                (self.next_lsn, nonce),
                body,
                &mut buf,
            );
            lsn += 1;
        }
        let size = buf.len() as u64;
        let full = self.active.as_ref().is_none_or(|active| {
            active.end > SEGMENT_HEADER && active.end + size > self.config.segment_bytes
        });
        let result = if full {
            self.roll(self.next_lsn)
        } else {
            Ok(())
        }
        .and_then(|()| self.write_active(&buf));
        self.buf = buf;
        if result.is_err() {
            self.broken = true;
        }
        result?;
        if let Some(active) = self.active.as_mut() {
            let mut offset = active.end - size;
            for (header, body) in records {
                mark(&mut active.marks, header.lsn, offset);
                offset += (RECORD_HEADER + body.len()) as u64;
            }
        }
        self.next_lsn = lsn;
        Ok(())
    }

    fn write_active(&mut self, record: &[u8]) -> Result<(), StorageError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let context = || format!("writing the log segment {}", active.name);
        active
            .file
            .write(active.end, record)
            .map_err(io_error(context()))?;
        let started = std::time::Instant::now();
        active
            .file
            .sync_data(false)
            .map_err(io_error(format!("fsyncing {}", active.name)))?;
        metrics::histogram!(crate::metrics::FSYNC_SECONDS).record(started.elapsed());
        active.end += record.len() as u64;
        Ok(())
    }

    /// Starts a new segment at `first_lsn`: a spare renamed, or a new file
    /// zero-filled to its full size, so that appends never change the
    /// file's size and `fdatasync` flushes data only.
    fn roll(&mut self, first_lsn: u64) -> Result<(), StorageError> {
        let name = segment_name(first_lsn);
        // A spare already bearing the name is the one to take: renaming
        // another over it would leave a spare that no longer exists.
        let spare = match self.spare.iter().position(|spare| *spare == name) {
            Some(index) => Some(self.spare.swap_remove(index)),
            None => self.spare.pop(),
        };
        if let Some(spare) = spare.filter(|spare| *spare != name) {
            self.disk
                .rename(&spare, &name)
                .map_err(io_error(format!("recycling {spare} as {name}")))?;
        }
        let file = self.open_file(&name)?;
        let context = || format!("preallocating {name}");
        let mut at = file.len().map_err(io_error(context()))?;
        let zeros = vec![0u8; 1 << 20];
        while at < self.config.segment_bytes {
            let n = (self.config.segment_bytes - at).min(zeros.len() as u64);
            file.write(at, &zeros[..n as usize])
                .map_err(io_error(context()))?;
            at += n;
        }
        // The header now, so that the segment is this history's even
        // before its first record.
        file.write(0, &segment_header(self.generation, first_lsn))
            .map_err(io_error(context()))?;
        file.sync_data(false).map_err(io_error(context()))?;
        if let Some(active) = self.active.take() {
            self.seal(active);
        }
        self.active = Some(Active {
            name,
            file,
            first_lsn,
            marks: Marks::new(),
            end: SEGMENT_HEADER,
        });
        Ok(())
    }

    fn seal(&mut self, active: Active) {
        if active.end == SEGMENT_HEADER {
            // Took no record: a spare again.
            self.spare.push(active.name);
            return;
        }
        self.sealed.push_back(Sealed {
            name: active.name,
            first_lsn: active.first_lsn,
            marks: active.marks,
            sealed_at: std::time::SystemTime::now(),
            last_lsn: self.next_lsn.saturating_sub(1),
            bytes: active.end,
        });
    }

    /// The index is durable through `lsn`: segments wholly at or before it
    /// and beyond the retention window (bytes or age) are retired.
    pub fn checkpointed(&mut self, lsn: u64) -> Result<(), StorageError> {
        let mut kept: u64 = self.sealed.iter().map(|s| s.bytes).sum::<u64>()
            + self.active.as_ref().map_or(0, |a| a.end);
        let now = std::time::SystemTime::now();
        while let Some(oldest) = self.sealed.front() {
            let too_much = kept.saturating_sub(oldest.bytes) >= self.config.retain_bytes;
            let too_old = now
                .duration_since(oldest.sealed_at)
                .is_ok_and(|age| age >= self.config.retain_age);
            if oldest.last_lsn > lsn || !(too_much || too_old) {
                break;
            }
            kept -= oldest.bytes;
            // Off the list only once retired: a failure leaves it in place.
            let name = oldest.name.clone();
            self.retire_file(name)?;
            self.sealed.pop_front();
        }
        Ok(())
    }

    /// Starts a new history at `next_lsn` (after a snapshot replaced the
    /// index): every segment becomes a spare or is removed.
    pub fn reset(&mut self, generation: u64, next_lsn: u64) -> Result<(), StorageError> {
        let mut names: Vec<String> = self.sealed.drain(..).map(|s| s.name).collect();
        names.extend(self.active.take().map(|a| a.name));
        for name in names {
            self.retire_file(name)?;
        }
        self.generation = generation;
        self.next_lsn = next_lsn;
        self.roll(next_lsn)
    }

    /// Keeps `name` as a spare, removing spares beyond [`SPARES`]. Its
    /// header is zeroed first (and synced): segments retire oldest first,
    /// so the log read at the next open starts at the oldest one kept and
    /// never at a leftover before a gap.
    fn retire_file(&mut self, name: String) -> Result<(), StorageError> {
        let file = self.open_file(&name)?;
        let context = || format!("retiring {name}");
        file.write(0, &[0; SEGMENT_HEADER as usize])
            .map_err(io_error(context()))?;
        file.sync_data(false).map_err(io_error(context()))?;
        self.spare.push(name);
        while self.spare.len() > SPARES {
            if let Some(extra) = self.spare.pop() {
                self.disk
                    .remove(&extra)
                    .map_err(io_error(format!("removing {extra}")))?;
            }
        }
        Ok(())
    }

    fn open_file(&self, name: &str) -> Result<Box<dyn StorageBackend>, StorageError> {
        self.disk
            .open(name)
            .map_err(io_error(format!("opening {name}")))
    }
}

/// Up to `len` bytes at `offset` of a file of `size` bytes (fewer at its
/// end).
fn read_upto(
    file: &dyn StorageBackend,
    size: u64,
    offset: u64,
    len: usize,
    name: &str,
) -> Result<Vec<u8>, StorageError> {
    let available = size.saturating_sub(offset).min(len as u64) as usize;
    if available == 0 {
        return Ok(Vec::new());
    }
    file.read(offset, available)
        .map_err(io_error(format!("reading {name}")))
}

/// The size of `file`.
fn file_len(file: &dyn StorageBackend, name: &str) -> Result<u64, StorageError> {
    file.len().map_err(io_error(format!("reading {name}")))
}

fn damage(name: &str, offset: u64, detail: &str) -> StorageError {
    StorageError::Damaged {
        path: name.to_string(),
        detail: format!("the log record at offset {offset} is damaged and {detail}"),
    }
}

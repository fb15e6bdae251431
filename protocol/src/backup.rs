//! Backups: the frames a server answers [`Request::Backup`](crate::Request)
//! with, which are also, byte for byte, the file `store-cli backup` writes.
//!
//! ```text
//! file   = BACKUP_MAGIC  header  rows*  end
//! header = frame(BackupPiece::Header(BackupHeader))
//! rows   = frame(BackupPiece::Rows(Vec<SnapshotRow>))
//! end    = frame(BackupPiece::End(BackupEnd { rows, crc32c }))
//! ```
//!
//! Frames are the wire's (a 4-byte big-endian length, then postcard).
//! `End` counts the rows and carries the CRC-32C of every byte of the
//! frames before it: the server computes both while it streams, the client
//! checks them while it writes the file, and a restore checks them again
//! before the store it made is kept. A server that cannot finish sends
//! [`BackupPiece::Failed`] instead of `End`. [`BackupTally`] is the one
//! place that checks a stream's order, count and checksum.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::{BackupError, FrameError, WireError};
use crate::frame::{decode_body, LENGTH_PREFIX_BYTES};
use crate::ids::{Epoch, Tid};
use crate::peer::SnapshotRow;

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: [u8; 8] = *b"ZEOLBAK1";

/// Largest frame a backup file may hold: the biggest `--max-frame-bytes`
/// a server streams with is well below it.
pub const MAX_BACKUP_FRAME_BYTES: u32 = 256 << 20;

/// Where the backed-up history ends, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The cluster the store belonged to (0: never part of a pair).
    pub cluster_id: u64,
    /// The server that streamed it.
    pub server_id: u64,
    /// The last TID in the backup: every commit up to it, none after.
    pub last_tid: Tid,
    /// The log position of that commit.
    pub lsn: u64,
    /// The epoch of the batch that wrote it.
    pub batch_epoch: Epoch,
    /// When the backup was taken, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
}

/// The trailer: how many rows came before it, and their checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEnd {
    /// Rows in every `Rows` frame.
    pub rows: u64,
    /// CRC-32C of every byte of every frame before this one.
    pub crc32c: u32,
}

/// One frame of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupPiece {
    /// First, once.
    Header(BackupHeader),
    /// Rows, in table order: keys, then outcomes, then watermarks.
    Rows(Vec<SnapshotRow>),
    /// Last: the backup is whole.
    End(BackupEnd),
    /// Last, instead of `End`: the server could not finish.
    Failed(WireError),
}

/// Checks a backup frame by frame, on whichever side holds it: the first
/// frame is the header, rows follow, and the end's count and checksum
/// match what came before it.
#[derive(Debug, Default, Clone)]
pub struct BackupTally {
    header: Option<BackupHeader>,
    rows: u64,
    bytes: u64,
    crc: u32,
    ended: bool,
}

impl BackupTally {
    /// Adds one frame: `frame` is its bytes as sent (length prefix
    /// included), `piece` the message they decode to. Returns the end once
    /// it arrives and matches.
    pub fn add(
        &mut self,
        frame: &[u8],
        piece: &BackupPiece,
    ) -> Result<Option<BackupEnd>, BackupError> {
        let damaged = |what: &str| Err(BackupError::Damaged(what.to_string()));
        if self.ended {
            return damaged("a frame after the end");
        }
        match piece {
            BackupPiece::Header(header) => {
                if self.header.is_some() {
                    return damaged("a second header");
                }
                self.header = Some(*header);
            }
            BackupPiece::Rows(rows) => {
                if self.header.is_none() {
                    return damaged("rows before the header");
                }
                self.rows = self.rows.saturating_add(rows.len() as u64);
            }
            BackupPiece::End(end) => {
                if self.header.is_none() {
                    return damaged("an end before the header");
                }
                if *end != self.seal() {
                    return Err(BackupError::Damaged(format!(
                        "the end names {} rows with checksum {:08x}, but {} rows with \
                         checksum {:08x} came before it",
                        end.rows, end.crc32c, self.rows, self.crc
                    )));
                }
                self.ended = true;
                self.bytes = self.bytes.saturating_add(frame.len() as u64);
                return Ok(Some(*end));
            }
            BackupPiece::Failed(error) => return Err(BackupError::Server(error.clone())),
        }
        self.crc = crc32c::crc32c_append(self.crc, frame);
        self.bytes = self.bytes.saturating_add(frame.len() as u64);
        Ok(None)
    }

    /// The end that matches every frame added so far.
    pub fn seal(&self) -> BackupEnd {
        BackupEnd {
            rows: self.rows,
            crc32c: self.crc,
        }
    }

    /// The header, once added.
    pub fn header(&self) -> Option<&BackupHeader> {
        self.header.as_ref()
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of frames added so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the end arrived and matched.
    pub fn is_complete(&self) -> bool {
        self.ended
    }
}

/// Checks that `reader` starts with [`BACKUP_MAGIC`].
pub fn read_magic(reader: &mut impl Read) -> Result<(), BackupError> {
    let mut magic = [0u8; BACKUP_MAGIC.len()];
    reader.read_exact(&mut magic).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            BackupError::Damaged("shorter than its magic number".into())
        }
        _ => BackupError::Frame(FrameError::Io(e)),
    })?;
    if magic != BACKUP_MAGIC {
        return Err(BackupError::Damaged(
            "it does not start with the magic number of a Zeolite backup".into(),
        ));
    }
    Ok(())
}

/// Reads the next frame of a backup file: its bytes and the piece they
/// decode to, or `None` at the end of the file. The length is checked
/// against [`MAX_BACKUP_FRAME_BYTES`] before the body is allocated.
pub fn read_piece(reader: &mut impl Read) -> Result<Option<(Vec<u8>, BackupPiece)>, BackupError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e).into()),
    }
    let len = u32::from_be_bytes(prefix);
    if len > MAX_BACKUP_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            limit: MAX_BACKUP_FRAME_BYTES,
        }
        .into());
    }
    let mut frame = prefix.to_vec();
    let got = reader.take(u64::from(len)).read_to_end(&mut frame)?;
    if got < len as usize {
        return Err(FrameError::Truncated {
            expected: u64::from(len),
            got: got as u64,
        }
        .into());
    }
    let piece = decode_body(&frame[LENGTH_PREFIX_BYTES..])?;
    Ok(Some((frame, piece)))
}

impl From<std::io::Error> for BackupError {
    fn from(e: std::io::Error) -> Self {
        BackupError::Frame(FrameError::Io(e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bytes::Bytes;

    use super::*;
    use crate::encode_frame;

    fn header() -> BackupPiece {
        BackupPiece::Header(BackupHeader {
            cluster_id: 7,
            server_id: 9,
            last_tid: Tid(42),
            lsn: 40,
            batch_epoch: Epoch(1),
            taken_at_ms: 1,
        })
    }

    fn rows(n: usize) -> BackupPiece {
        BackupPiece::Rows(
            (0..n)
                .map(|i| SnapshotRow::Data {
                    key: Bytes::from(format!("k{i}")),
                    serial: Tid(i as u64),
                    value: Bytes::from_static(b"v"),
                })
                .collect(),
        )
    }

    /// A whole backup file: magic, then the frames, with a sealed end.
    fn file(pieces: &[BackupPiece]) -> Vec<u8> {
        let mut tally = BackupTally::default();
        let mut out = BACKUP_MAGIC.to_vec();
        for piece in pieces {
            let frame = encode_frame(piece, u32::MAX).unwrap();
            tally.add(&frame, piece).unwrap();
            out.extend_from_slice(&frame);
        }
        let end = BackupPiece::End(tally.seal());
        out.extend_from_slice(&encode_frame(&end, u32::MAX).unwrap());
        out
    }

    fn check(bytes: &[u8]) -> Result<BackupTally, BackupError> {
        let mut reader = bytes;
        read_magic(&mut reader)?;
        let mut tally = BackupTally::default();
        while let Some((frame, piece)) = read_piece(&mut reader)? {
            tally.add(&frame, &piece)?;
        }
        if !tally.is_complete() {
            return Err(BackupError::Damaged("no end".into()));
        }
        Ok(tally)
    }

    #[test]
    fn a_whole_file_checks_and_counts_its_rows() {
        let tally = check(&file(&[header(), rows(3), rows(2)])).unwrap();
        assert_eq!(tally.rows(), 5);
        assert_eq!(tally.header().unwrap().last_tid, Tid(42));
    }

    #[test]
    fn every_flipped_byte_after_the_magic_is_refused() {
        let good = file(&[header(), rows(3)]);
        for at in BACKUP_MAGIC.len()..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(check(&bad).is_err(), "a flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn a_cut_file_is_refused_wherever_it_is_cut() {
        let good = file(&[header(), rows(3)]);
        for len in 0..good.len() {
            assert!(check(&good[..len]).is_err(), "cut at {len} accepted");
        }
    }

    #[test]
    fn order_is_checked() {
        let mut tally = BackupTally::default();
        let frame = encode_frame(&rows(1), u32::MAX).unwrap();
        assert!(tally.add(&frame, &rows(1)).is_err(), "rows before header");
        let mut tally = BackupTally::default();
        let frame = encode_frame(&header(), u32::MAX).unwrap();
        tally.add(&frame, &header()).unwrap();
        assert!(tally.add(&frame, &header()).is_err(), "second header");
        let failed = BackupPiece::Failed(WireError::Overloaded);
        assert!(matches!(
            tally.add(&[], &failed),
            Err(BackupError::Server(WireError::Overloaded))
        ));
    }

    #[test]
    fn a_huge_announced_frame_is_refused_before_allocating() {
        let mut bytes = (MAX_BACKUP_FRAME_BYTES + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        assert!(matches!(
            read_piece(&mut &bytes[..]),
            Err(BackupError::Frame(FrameError::TooLarge { .. }))
        ));
    }
}

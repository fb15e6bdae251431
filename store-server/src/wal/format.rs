//! The log's bytes, little-endian throughout.
//!
//! A segment file is named for the LSN of its first record,
//! `{first_lsn:020}.wal`, and starts with a 32-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `ZEOWAL\0\x01` (format version 1) |
//! | 8 | 8 | generation: random per history, new after a snapshot install |
//! | 16 | 8 | first LSN |
//! | 24 | 4 | CRC-32C of bytes 0..24 |
//! | 28 | 4 | zero |
//!
//! Records follow back to back from offset 32, never spanning segments:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | body length `n` |
//! | 4 | 4 | CRC-32C of the generation (8 bytes) then bytes 8..40+n |
//! | 8 | 8 | LSN (one more than the record before it) |
//! | 16 | 8 | epoch the batch was decided in |
//! | 24 | 8 | first TID the batch assigned (0: it assigned none) |
//! | 32 | 8 | last TID after the batch |
//! | 40 | n | body (the storage's redo record, postcard) |
//!
//! The log ends at the first record that is short, fails its checksum or
//! does not carry the next LSN. Folding the generation into the checksum
//! means a record copied into a value by a client, or left in a recycled
//! segment by an earlier history, never passes for one of this history.

use store_protocol::{Epoch, Tid};

/// The segment header's magic: format version 1.
pub const MAGIC: [u8; 8] = *b"ZEOWAL\0\x01";
/// Bytes of a segment header.
pub const SEGMENT_HEADER: u64 = 32;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 40;

/// A record's header: where the batch sits in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Its log sequence number.
    pub lsn: u64,
    /// The epoch it was decided in.
    pub epoch: Epoch,
    /// The first TID it assigned (`Tid(0)`: none).
    pub first_tid: Tid,
    /// The last TID after it.
    pub last_tid: Tid,
}

/// The header of a segment starting at `first_lsn`.
pub fn segment_header(generation: u64, first_lsn: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..16].copy_from_slice(&generation.to_le_bytes());
    header[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A segment header's (generation, first LSN), if it is one.
pub fn parse_segment_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let header = bytes.get(..SEGMENT_HEADER as usize)?;
    if header[0..8] != MAGIC || crc32c::crc32c(&header[0..24]) != le32(&header[24..28]) {
        return None;
    }
    Some((le64(&header[8..16]), le64(&header[16..24])))
}

/// Appends a whole record (header and body) to `out`.
pub fn encode_record(generation: u64, header: &RecordHeader, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    // Bodies are bounded far below 4 GiB by the batch and request limits.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.lsn.to_le_bytes());
    out.extend_from_slice(&header.epoch.0.to_le_bytes());
    out.extend_from_slice(&header.first_tid.0.to_le_bytes());
    out.extend_from_slice(&header.last_tid.0.to_le_bytes());
    out.extend_from_slice(body);
    let crc = record_crc(generation, &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record header's fields before its checksum is verified: (body
/// length, claimed checksum, header).
pub fn parse_record_header(bytes: &[u8]) -> Option<(u32, u32, RecordHeader)> {
    let bytes = bytes.get(..RECORD_HEADER)?;
    Some((
        le32(&bytes[0..4]),
        le32(&bytes[4..8]),
        RecordHeader {
            lsn: le64(&bytes[8..16]),
            epoch: Epoch(le64(&bytes[16..24])),
            first_tid: Tid(le64(&bytes[24..32])),
            last_tid: Tid(le64(&bytes[32..40])),
        },
    ))
}

/// The checksum of a record whose bytes from offset 8 are `covered`.
pub fn record_crc(generation: u64, covered: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), covered)
}

fn le32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_le_bytes(array)
}

fn le64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_le_bytes(array)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_fails_its_checksum() {
        let header = RecordHeader {
            lsn: 7,
            epoch: Epoch(2),
            first_tid: Tid(40),
            last_tid: Tid(41),
        };
        let mut bytes = Vec::new();
        encode_record(99, &header, b"body", &mut bytes);
        assert_eq!(bytes.len(), RECORD_HEADER + 4);
        let (len, crc, parsed) = parse_record_header(&bytes).unwrap();
        assert_eq!((len, parsed), (4, header));
        assert_eq!(record_crc(99, &bytes[8..]), crc);
        assert_ne!(record_crc(98, &bytes[8..]), crc, "another history's key");
        for bit in 64..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(record_crc(99, &flipped[8..]), crc, "bit {bit}");
        }
    }

    #[test]
    fn a_segment_header_round_trips_and_zeroes_are_none() {
        let header = segment_header(5, 100);
        assert_eq!(parse_segment_header(&header), Some((5, 100)));
        assert_eq!(parse_segment_header(&[0; 32]), None);
        assert_eq!(parse_segment_header(&header[..31]), None);
    }
}

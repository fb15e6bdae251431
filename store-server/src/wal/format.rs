//! The log's bytes, little-endian throughout.
//!
//! A segment file is named for the LSN of its first record,
//! `{first_lsn:020}.wal`, and starts with a 32-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `ZEOWAL\0\x02` (format version 2) |
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
//! | 4 | 4 | record CRC-32C: of the generation (8 bytes), bytes 8..48 and the body |
//! | 8 | 8 | LSN (one more than the record before it) |
//! | 16 | 8 | epoch the batch was decided in |
//! | 24 | 8 | first TID the batch assigned (0: it assigned none) |
//! | 32 | 8 | last TID after the batch |
//! | 40 | 8 | LSN of the first record of its group (the records written and fsynced together) |
//! | 48 | 4 | header CRC-32C: of the generation, then bytes 0..48 and 52..56 |
//! | 52 | 4 | the group's nonce: random per group, the same in all its records |
//! | 56 | n | body (the storage's redo record, postcard) |
//!
//! The log ends at the first record that is short, fails a checksum or
//! does not carry the next LSN. Folding the generation into the checksums
//! means a record copied into a value by a client, or left in a recycled
//! segment by an earlier history, never passes for one of this history;
//! the header's own checksum lets a scan for records past a damaged one
//! skip anything that is not a header without reading a claimed body.
//! A damaged record followed by a valid one of the same group is a group
//! torn before its fsync (never acknowledged): the log ends there. A
//! record continuing a group must carry that group's nonce, so records
//! left over from a torn group never continue a group written over it.

use store_protocol::{Epoch, Tid};

/// The segment header's magic: format version 1.
pub const MAGIC: [u8; 8] = *b"ZEOWAL\0\x02";
/// Bytes of a segment header.
pub const SEGMENT_HEADER: u64 = 32;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 56;

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

/// A record's header as read back: its length, checksum and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedHeader {
    /// Bytes of the body.
    pub body_len: u32,
    /// The record checksum it claims.
    pub crc: u32,
    /// Where the batch sits in the history.
    pub header: RecordHeader,
    /// The LSN of the first record of its group.
    pub group_first: u64,
    /// Its group's nonce.
    pub nonce: u32,
}

/// Appends a whole record (header and body) of the group that starts at
/// LSN `group_first`, with nonce `nonce`, to `out`.
pub fn encode_record(
    generation: u64,
    header: &RecordHeader,
    (group_first, nonce): (u64, u32),
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    // Bodies are bounded far below 4 GiB by the batch and request limits.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.lsn.to_le_bytes());
    out.extend_from_slice(&header.epoch.0.to_le_bytes());
    out.extend_from_slice(&header.first_tid.0.to_le_bytes());
    out.extend_from_slice(&header.last_tid.0.to_le_bytes());
    out.extend_from_slice(&group_first.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&nonce.to_le_bytes());
    out.extend_from_slice(body);
    let crc = record_crc(generation, &out[start + 8..start + 48], body);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = header_crc(generation, &out[start..start + RECORD_HEADER]);
    out[start + 48..start + 52].copy_from_slice(&header_crc.to_le_bytes());
}

/// A record header's fields, if its own checksum holds for `generation`
/// (the body is not checked).
pub fn parse_record_header(generation: u64, bytes: &[u8]) -> Option<ParsedHeader> {
    let bytes = bytes.get(..RECORD_HEADER)?;
    if header_crc(generation, bytes) != le32(&bytes[48..52]) {
        return None;
    }
    Some(ParsedHeader {
        body_len: le32(&bytes[0..4]),
        crc: le32(&bytes[4..8]),
        header: RecordHeader {
            lsn: le64(&bytes[8..16]),
            epoch: Epoch(le64(&bytes[16..24])),
            first_tid: Tid(le64(&bytes[24..32])),
            last_tid: Tid(le64(&bytes[32..40])),
        },
        group_first: le64(&bytes[40..48]),
        nonce: le32(&bytes[52..56]),
    })
}

/// The record checksum over its header fields (bytes 8..48) and body.
pub fn record_crc(generation: u64, fields: &[u8], body: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), fields);
    crc32c::crc32c_append(crc, body)
}

/// The header checksum over a whole header, skipping its own field.
fn header_crc(generation: u64, header: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), &header[0..48]);
    crc32c::crc32c_append(crc, &header[52..RECORD_HEADER])
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
    fn a_record_round_trips_and_any_flipped_bit_fails_a_checksum() {
        let header = RecordHeader {
            lsn: 7,
            epoch: Epoch(2),
            first_tid: Tid(40),
            last_tid: Tid(41),
        };
        let mut bytes = Vec::new();
        encode_record(99, &header, (5, 77), b"body", &mut bytes);
        assert_eq!(bytes.len(), RECORD_HEADER + 4);
        let parsed = parse_record_header(99, &bytes).unwrap();
        assert_eq!(
            (
                parsed.body_len,
                parsed.header,
                parsed.group_first,
                parsed.nonce
            ),
            (4, header, 5, 77)
        );
        let valid = |bytes: &[u8]| {
            parse_record_header(99, bytes)
                .is_some_and(|p| record_crc(99, &bytes[8..48], &bytes[RECORD_HEADER..]) == p.crc)
        };
        assert!(valid(&bytes));
        assert!(
            parse_record_header(98, &bytes).is_none(),
            "another history's"
        );
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!valid(&flipped), "bit {bit}");
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

//! The log against the simulated disk: rolls, torn tails, damage,
//! retention, recycling and new histories.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use store_protocol::{Epoch, Tid};

use super::sim::SimDisk;
use super::*;
use crate::error::StorageError;

fn small() -> WalConfig {
    WalConfig {
        segment_bytes: 4096,
        checkpoint_bytes: 8192,
        retain_bytes: 8192,
        retain_age: std::time::Duration::from_secs(3600),
    }
}

fn header(lsn: u64) -> RecordHeader {
    RecordHeader {
        lsn,
        epoch: Epoch(1),
        first_tid: Tid(lsn),
        last_tid: Tid(lsn),
    }
}

/// A record of about 300 bytes, its body naming its LSN.
fn body(lsn: u64) -> Vec<u8> {
    let mut body = lsn.to_le_bytes().to_vec();
    body.resize(300, lsn as u8);
    body
}

fn append(wal: &mut Wal, from: u64, count: u64) {
    for lsn in from..from + count {
        wal.append(&[(header(lsn), &body(lsn)[..])]).unwrap();
    }
}

fn open(disk: &SimDisk, generation: u64) -> Result<(Wal, Vec<u64>), StorageError> {
    let mut lsns = Vec::new();
    let wal = Wal::open(Arc::new(disk.clone()), generation, 1, small(), |record| {
        assert_eq!(record.body, body(record.header.lsn));
        lsns.push(record.header.lsn);
        Ok(())
    })?;
    Ok((wal, lsns))
}

/// Why the log refuses to open.
fn refusal(disk: &SimDisk) -> String {
    match open(disk, 7) {
        Err(e) => e.to_string(),
        Ok((_, lsns)) => panic!("opened, with {lsns:?}"),
    }
}

fn segments(disk: &SimDisk) -> Vec<String> {
    disk.list().unwrap()
}

#[test]
fn records_come_back_in_order_across_segments_and_power_cuts() {
    let disk = SimDisk::new();
    let (mut wal, lsns) = open(&disk, 7).unwrap();
    assert!(lsns.is_empty());
    append(&mut wal, 1, 40);
    assert!(segments(&disk).len() > 2, "{:?}", segments(&disk));
    disk.power_cut(1);
    let (mut wal, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns, (1..=40).collect::<Vec<_>>());
    append(&mut wal, 41, 2);
    let (_, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns.last(), Some(&42));
}

#[test]
fn a_torn_last_record_is_cut_off_and_overwritten() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 3);
    // The last record's last byte: it fails its checksum, nothing follows.
    let name = segments(&disk)[0].clone();
    let end = 32 + 3 * (56 + 300);
    disk.flip_bit(&name, end - 1);
    let (mut wal, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns, vec![1, 2]);
    assert_eq!(wal.next_lsn(), 3);
    append(&mut wal, 3, 2);
    let (_, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns, vec![1, 2, 3, 4]);
}

#[test]
fn damage_before_the_tail_refuses_naming_file_and_offset() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 5);
    let name = segments(&disk)[0].clone();
    let second = 32 + 56 + 300;
    disk.flip_bit(&name, second + 50);
    let error = refusal(&disk);
    assert!(error.contains(&name), "{error}");
    assert!(error.contains(&format!("offset {second}")), "{error}");
}

#[test]
fn a_damaged_last_record_of_a_full_segment_is_a_gap_not_a_tail() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 20);
    let first = segments(&disk)[0].clone();
    // 4096-byte segments hold 11 records of 356 bytes after the header.
    let last = 32 + 10 * 356;
    disk.flip_bit(&first, last + 45);
    let error = refusal(&disk);
    assert!(
        error.contains(&first) && error.contains("goes on at LSN 12"),
        "{error}"
    );
}

#[test]
fn checkpoints_retire_old_segments_and_rolls_recycle_them() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    for round in 0..20 {
        append(&mut wal, round * 11 + 1, 11);
        wal.checkpointed(round * 11 + 11).unwrap();
        // Retained (8 KiB: about two full segments past the active one),
        // the active one, and at most two spares.
        assert!(segments(&disk).len() <= 6, "{:?}", segments(&disk));
    }
    let (_, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns.last(), Some(&220));
    assert!(lsns[0] > 150, "old records were retired: {}", lsns[0]);
    assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn a_new_history_ignores_the_old_ones_records() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 30);
    wal.reset(8, 100).unwrap();
    append(&mut wal, 100, 2);
    let (wal, lsns) = open(&disk, 8).unwrap();
    assert_eq!(lsns, vec![100, 101]);
    assert_eq!(wal.next_lsn(), 102);
    // Under the old generation nothing of the new history counts.
    let (_, old) = open(&disk, 7).unwrap();
    assert!(old.iter().all(|&lsn| lsn < 100));
}

#[test]
fn a_failed_fsync_breaks_the_log_until_it_is_reopened() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 2);
    disk.fail_in(Some(1), true);
    let error = wal.append(&[(header(3), &body(3)[..])]).unwrap_err();
    assert!(error.to_string().contains("No space"), "{error}");
    assert!(wal.append(&[(header(3), &body(3)[..])]).is_err(), "broken");
    disk.power_cut(3);
    let (wal, lsns) = open(&disk, 7).unwrap();
    assert_eq!(wal.next_lsn(), lsns.len() as u64 + 1);
    assert!(lsns.len() == 2 || lsns.len() == 3);
}

#[test]
fn records_are_read_back_from_any_retained_lsn_across_segments() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 40);
    let lsns = |records: Vec<Record>| records.iter().map(|r| r.header.lsn).collect::<Vec<_>>();
    assert_eq!(
        lsns(wal.read_from(1, usize::MAX).unwrap()),
        (1..=40).collect::<Vec<_>>()
    );
    assert_eq!(
        lsns(wal.read_from(17, usize::MAX).unwrap()),
        (17..=40).collect::<Vec<_>>()
    );
    // About max_bytes of bodies (300 each), at least one record.
    assert_eq!(lsns(wal.read_from(5, 700).unwrap()), vec![5, 6, 7]);
    assert_eq!(lsns(wal.read_from(5, 1).unwrap()), vec![5]);
    assert!(wal.read_from(41, usize::MAX).unwrap().is_empty());
    let body = &wal.read_from(23, 1).unwrap()[0].body;
    assert_eq!(*body, self::body(23));
    // A retired segment's records are no longer held.
    wal.checkpointed(40).unwrap();
    assert!(wal.read_from(1, usize::MAX).unwrap().is_empty());
    assert_eq!(
        lsns(wal.read_from(12, usize::MAX).unwrap()),
        (12..=40).collect::<Vec<_>>()
    );
}

#[test]
fn segments_past_the_retention_age_are_retired_at_a_checkpoint() {
    let disk = SimDisk::new();
    let config = WalConfig {
        retain_bytes: u64::MAX,
        retain_age: std::time::Duration::ZERO,
        ..small()
    };
    let mut wal = Wal::open(Arc::new(disk.clone()), 7, 1, config, |_| Ok(())).unwrap();
    append(&mut wal, 1, 40);
    // Not past the checkpoint: kept, however old.
    wal.checkpointed(10).unwrap();
    assert_eq!(wal.read_from(1, 1).unwrap()[0].header.lsn, 1);
    wal.checkpointed(40).unwrap();
    // Only the segment being written remains.
    assert!(wal.read_from(33, 1).unwrap().is_empty());
    assert_eq!(wal.read_from(34, 1).unwrap()[0].header.lsn, 34);
}

#[test]
fn a_group_torn_before_its_fsync_ends_the_log_and_is_not_damage() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 2);
    // A backup appends what arrived together: one write, one fsync.
    let bodies: Vec<_> = (3..6).map(body).collect();
    let group: Vec<_> = (3..6)
        .zip(&bodies)
        .map(|(lsn, b)| (header(lsn), &b[..]))
        .collect();
    wal.append(&group).unwrap();
    // The power failed mid-write: the group's first record is torn, the
    // others reached the disk.
    let name = segments(&disk)[0].clone();
    disk.flip_bit(&name, 32 + 2 * 356 + 100);
    let (mut wal, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns, vec![1, 2]);
    append(&mut wal, 3, 1);
    let (_, lsns) = open(&disk, 7).unwrap();
    assert_eq!(lsns, vec![1, 2, 3]);
    // The same damage to a record with a later group after it is damage.
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    wal.append(&group[..0]).unwrap();
    append(&mut wal, 1, 2);
    wal.append(&group).unwrap();
    append(&mut wal, 6, 1);
    disk.flip_bit(&segments(&disk)[0], 32 + 2 * 356 + 100);
    let error = refusal(&disk);
    assert!(error.contains("valid record follows"), "{error}");
}

#[test]
fn a_damaged_header_on_a_segment_with_records_refuses_to_open() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, 7).unwrap();
    append(&mut wal, 1, 3);
    disk.flip_bit(&segments(&disk)[0], 20);
    let error = refusal(&disk);
    assert!(error.contains("header is damaged"), "{error}");
}

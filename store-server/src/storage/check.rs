//! `store-server check`: whether a data directory's store is sound,
//! without serving it.

use std::path::Path;

use redb::{ReadableTable, ReadableTableMetadata};

use std::sync::Arc;

use super::replay::LogReach;
use super::{
    meta_number, open_database, BATCH_EPOCH, CLUSTER_ID, DATA, EPOCH, GENERATION, LAST_TID, LSN,
    META, NODE, SERVER_ID, WAL_DIR,
};
use crate::error::StorageError;
use crate::outcomes::{Recorded, OUTCOMES, WATERMARKS};
use crate::wal::{OsDisk, Wal, WalConfig};

/// What `check` found in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// `name=value` facts: identity, history end, row counts.
    pub facts: Vec<(String, String)>,
    /// What is wrong; empty when the store is sound.
    pub problems: Vec<String>,
}

/// Checks the store at `path`: the engine's own integrity check (every
/// page's checksum, every tree's structure), the identity and history
/// numbers, that every recorded outcome decodes, and the log beside it
/// (every record's checksum; that it carries on from the index). A file that cannot be
/// opened at all (damaged, or in use by a running server) is the error.
/// Completing an interrupted redb repair is the only write it may make.
pub fn check(path: &Path) -> Result<CheckReport, StorageError> {
    if !path.exists() {
        return Ok(CheckReport {
            facts: Vec::new(),
            problems: vec![format!("there is no store at {}", path.display())],
        });
    }
    let (mut db, _) = open_database(path)?;
    let mut problems = Vec::new();
    if !db.check_integrity()? {
        problems.push("the engine's integrity check repaired damage (checksums or trees)".into());
    }
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let number = |name| meta_number(&meta, name);
    let node = match number(NODE)? {
        0 => "none".to_string(),
        stored => (stored - 1).to_string(),
    };
    let mut facts = vec![
        (
            "server_id".to_string(),
            format!("{:016x}", number(SERVER_ID)?),
        ),
        (
            "cluster_id".to_string(),
            format!("{:016x}", number(CLUSTER_ID)?),
        ),
        ("node".to_string(), node),
    ];
    for name in [EPOCH, BATCH_EPOCH, LSN, LAST_TID] {
        facts.push((name.to_string(), number(name)?.to_string()));
    }
    if meta_number(&meta, SERVER_ID)? == 0 {
        problems.push("no server id: not a Zeolite store".into());
    }
    let keys = txn.open_table(DATA)?.len()?;
    facts.push(("keys".into(), keys.to_string()));
    let outcomes = txn.open_table(OUTCOMES)?;
    let mut decoded = 0u64;
    for row in outcomes.iter()? {
        let (key, value) = row?;
        let (client_id, seq) = key.value();
        match postcard::from_bytes::<Recorded>(value.value()) {
            Ok(_) => decoded += 1,
            Err(e) => problems.push(format!(
                "the outcome of {client_id:032x}:{seq} does not decode: {e}"
            )),
        }
    }
    facts.push(("outcomes".into(), decoded.to_string()));
    let clients = txn.open_table(WATERMARKS)?.len()?;
    facts.push(("watermarks".into(), clients.to_string()));
    let checkpoint = number(LSN)?;
    check_log(
        path,
        number(GENERATION)?,
        checkpoint,
        &mut facts,
        &mut problems,
    )?;
    Ok(CheckReport { facts, problems })
}

/// Reads the log beside the index at `path` through (every record's
/// checksum), and checks that it carries the history on from the index's
/// checkpoint.
fn check_log(
    path: &Path,
    generation: u64,
    checkpoint: u64,
    facts: &mut Vec<(String, String)>,
    problems: &mut Vec<String>,
) -> Result<(), StorageError> {
    let dir = path.with_file_name(WAL_DIR);
    if !dir.is_dir() {
        facts.push(("log".into(), "none".into()));
        if checkpoint > 0 && generation != 0 {
            problems.push(format!("{} is missing", dir.display()));
        }
        return Ok(());
    }
    let disk = OsDisk::new(&dir).map_err(|source| StorageError::Log {
        context: format!("opening {}", dir.display()),
        source,
    })?;
    let mut first = None;
    let mut records = 0u64;
    let opened = Wal::open(
        Arc::new(disk),
        generation,
        checkpoint.saturating_add(1),
        WalConfig::default(),
        |record| {
            first.get_or_insert(record.header.lsn);
            records += 1;
            Ok(())
        },
    );
    let wal = match opened {
        Ok(wal) => wal,
        Err(e) => {
            problems.push(e.to_string());
            return Ok(());
        }
    };
    let end = wal.next_lsn().saturating_sub(1);
    facts.push(("log_records".into(), records.to_string()));
    facts.push(("log_end_lsn".into(), end.to_string()));
    facts.push((
        "replay_on_start".into(),
        end.saturating_sub(checkpoint).to_string(),
    ));
    let reach = LogReach {
        first,
        next_lsn: wal.next_lsn(),
        holds_history: wal.holds_history(),
    };
    if let Err(detail) = reach.covers(checkpoint, generation == 0) {
        problems.push(format!("{}: {detail}", dir.display()));
    }
    Ok(())
}

//! Moving data directories about as an operator would: copying a tree,
//! and restoring a backup into a new data directory beside a server.

use std::path::Path;
use std::process::Command;

use crate::{binary, CliOutput, ServerProcess};

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs `store-server restore ARGS...`.
pub fn restore(args: &[&str]) -> CliOutput {
    Command::new(binary("store-server"))
        .arg("restore")
        .args(args)
        .output()
        .unwrap()
        .into()
}

/// Restores the backup `file` into `dir/data`, first copying `source`'s
/// development CA and certificates there (so that a server started with
/// [`ServerProcess::start`]`(dir)` serves the same clients); returns what
/// `store-server restore` printed.
pub fn restore_beside(source: &ServerProcess, file: &Path, dir: &Path) -> CliOutput {
    let data = dir.join("data");
    for sub in ["tls", "tls-private"] {
        copy_dir(&source.data_dir().join(sub), &data.join(sub));
    }
    restore(&[
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

//! Damaged disks (issue "Trust boundaries", item 7): a write the disk
//! refuses stops the server (fail-stop, exit 74) instead of leaving it up
//! with healthy-looking pongs, and nothing acknowledged is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use store_client::Client;
use store_tests::ServerProcess;

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount (the tests run as root)");
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let _tmpfs = Tmpfs::mount(&full.join("data"), "8m");
    // Log segments of 1 MiB: several fit before the disk is full.
    let mut server = ServerProcess::start_with(&full, &["--wal-segment-bytes", "1048576"]).await;
    let client = Client::connect(server.client_config().timeout(Duration::from_secs(3)))
        .await
        .unwrap();

    let value = vec![b'v'; 256 * 1024];
    let mut acked = Vec::new();
    // 8 MiB of tmpfs fills well within 64 values of 256 KiB.
    for i in 0..64 {
        match client.put(format!("k{i}"), value.clone()).await {
            Ok(_) => acked.push(i),
            Err(_) => break,
        }
    }
    assert!(
        !acked.is_empty() && acked.len() < 64,
        "acked {}",
        acked.len()
    );
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(74), "{}", server.log_text());
    assert!(server.log_text().contains("the disk refused a write"));
    client.close().await;

    // On a disk with room, every acknowledged write is there.
    let moved = dir.path().join("moved");
    store_tests::restore::copy_dir(&full.join("data"), &moved.join("data"));
    let server = ServerProcess::start(&moved).await;
    let client = server.client().await;
    for i in acked {
        let got = client.get(format!("k{i}")).await.unwrap();
        assert_eq!(got.map(|v| v.len()), Some(value.len()), "k{i}");
    }
    client.close().await;
}

//! Backup and restore while serving, dump and load: a backup taken under a
//! writer restores to exactly the acknowledged state at its TID; a damaged
//! backup or an occupied data directory is refused and leaves nothing;
//! dump | load round-trips binary keys and values; a load killed with
//! SIGKILL and run again applies every batch once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use store_client::{Client, ScanRequest};
use store_tests::restore::{restore, restore_beside};
use store_tests::scrape::{get, sample};
use store_tests::{binary, cli, CliOutput, ServerProcess};

/// Every entry under `prefix`, page by page.
async fn entries(client: &Client, prefix: &str) -> BTreeMap<Bytes, (Bytes, u64)> {
    let mut all = BTreeMap::new();
    let mut scan = ScanRequest::prefix(Bytes::copy_from_slice(prefix.as_bytes()), 1000);
    loop {
        let page = client.scan(scan.clone()).await.unwrap();
        for entry in &page.entries {
            all.insert(entry.key.clone(), (entry.value.clone(), entry.serial.0));
        }
        match page.next_start() {
            Some(start) => scan.start = start,
            None => return all,
        }
    }
}

/// `key=value` from a summary line such as `backup tid=4 rows=12 ...`.
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_a_writer_restores_exactly_the_acknowledged_state_at_its_tid() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(&dir.path().join("a")).await;
    let client = source.client().await;
    // Enough rows that the backup streams in several frames.
    for chunk in 0..4 {
        let mut txn = client.txn();
        for i in 0..500 {
            txn.put(format!("p/{chunk}/{i:04}"), vec![b'x'; 1024]);
        }
        txn.commit().await.unwrap();
    }

    // A writer that records every acknowledged write, running throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let until = Instant::now() + Duration::from_secs(120);
            for i in 0..50_000u64 {
                if stop.load(Ordering::Acquire) || Instant::now() > until {
                    break;
                }
                let key = format!("w/{:02}", i % 40);
                let outcome = client.put(key.clone(), i.to_string()).await.unwrap();
                acked.push((outcome.tid.0, key, i.to_string()));
            }
            acked
        })
    };
    let wait_for_tid = |at_least: u64| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while client.status().await.unwrap().last_tid.0 < at_least {
                assert!(Instant::now() < deadline, "the writer stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_tid(4 + 30).await;
    let file = dir.path().join("store.backup");
    let taken = {
        let file = file.clone();
        let args = ["backup".to_string(), file.display().to_string()];
        let source_addr = source.addr().to_string();
        let tls = source.tls_dir();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            store_tests::cli_with(&source_addr, &tls, &args, None)
        })
        .await
        .unwrap()
    };
    assert_eq!(taken.code, 0, "{taken:?}");
    let backup_tid = field(&taken.stdout, "tid");
    wait_for_tid(backup_tid + 30).await;
    stop.store(true, Ordering::Release);
    let acked = writer.await.unwrap();
    assert!(acked.iter().any(|(tid, ..)| *tid <= backup_tid));
    assert!(acked.iter().any(|(tid, ..)| *tid > backup_tid));

    // Refused: a directory that holds a store, and a damaged file; neither
    // leaves anything behind.
    let occupied = restore(&[
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        source.data_dir().to_str().unwrap(),
    ]);
    assert_eq!(occupied.code, 2, "{occupied:?}");
    assert!(
        occupied.stderr.contains("already holds a store"),
        "{occupied:?}"
    );
    let bytes = std::fs::read(&file).unwrap();
    let damaged = dir.path().join("damaged.backup");
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let nowhere = dir.path().join("nowhere");
    let refused = restore(&[
        "--from",
        damaged.to_str().unwrap(),
        "--data-dir",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(!nowhere.exists(), "a refused restore left {nowhere:?}");
    std::fs::write(&damaged, &bytes[..bytes.len() - 3]).unwrap();
    assert_eq!(
        restore(&[
            "--from",
            damaged.to_str().unwrap(),
            "--data-dir",
            nowhere.to_str().unwrap()
        ])
        .code,
        1
    );
    assert!(!nowhere.exists());

    // Restored into a new directory, it holds exactly the writes
    // acknowledged at or before the backup's TID.
    let restored_dir = dir.path().join("b");
    let made = restore_beside(&source, &file, &restored_dir);
    assert_eq!(made.code, 0, "{made:?}");
    assert_eq!(field(&made.stdout, "tid"), backup_tid, "{made:?}");
    let restored = ServerProcess::start(&restored_dir).await;
    let reader = restored.client().await;
    assert_eq!(reader.status().await.unwrap().last_tid.0, backup_tid);
    let mut expected = BTreeMap::new();
    for (tid, key, value) in acked.iter().filter(|(tid, ..)| *tid <= backup_tid) {
        expected.insert(Bytes::from(key.clone()), (Bytes::from(value.clone()), *tid));
    }
    assert_eq!(entries(&reader, "w/").await, expected);
    assert_eq!(entries(&reader, "p/").await.len(), 2000);
    // And it is a store of its own: it takes writes.
    reader.put("after-restore", "yes").await.unwrap();
    reader.close().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_then_load_round_trips_binary_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(&dir.path().join("a")).await;
    let client = source.client().await;
    let rows: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"d/text".to_vec(), b"plain value".to_vec()),
        (b"d/bin".to_vec(), vec![0xff, 0x00, 0xfe, b'\n']),
        (vec![b'd', b'/', 0xc3, 0x28], b"key is not UTF-8".to_vec()),
        (b"d/empty".to_vec(), Vec::new()),
        (b"d/quote\"tab\t".to_vec(), b"{\"json\": true}".to_vec()),
    ];
    for (key, value) in &rows {
        client.put(key.clone(), value.clone()).await.unwrap();
    }
    client.put("other/x", "not dumped").await.unwrap();
    let dumped = cli(&source, &["dump", "d/"], None);
    assert_eq!(dumped.code, 0, "{dumped:?}");
    assert_eq!(dumped.stdout.lines().count(), rows.len(), "{dumped:?}");
    let file = dir.path().join("dump.jsonl");
    std::fs::write(&file, &dumped.stdout).unwrap();

    let target = ServerProcess::start(&dir.path().join("b")).await;
    let loaded = cli(&target, &["load", file.to_str().unwrap()], None);
    assert_eq!(loaded.code, 0, "{loaded:?}");
    assert_eq!(field(&loaded.stdout, "applied"), rows.len() as u64);
    let copy = target.client().await;
    let got: BTreeMap<Bytes, Bytes> = entries(&copy, "d/")
        .await
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect();
    let want: BTreeMap<Bytes, Bytes> = rows
        .into_iter()
        .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(copy.get("other/x").await.unwrap(), None);
    // A bad line is refused before anything is committed.
    std::fs::write(&file, format!("{}\nnot json\n", dumped.stdout.trim_end())).unwrap();
    let bad = cli(&target, &["load", file.to_str().unwrap()], None);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("line 6"), "{bad:?}");
    copy.close().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_killed_and_run_again_applies_every_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let lines = 20_000u64;
    let batch = 10u64;
    let file = dir.path().join("load.jsonl");
    let text: String = (0..lines)
        .map(|i| format!("{{\"key\":\"l/{i:06}\",\"value\":\"{i}\"}}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    let args = |cmd: &mut Command| {
        cmd.arg("--server")
            .arg(server.addr().to_string())
            .arg("--tls-dir")
            .arg(server.tls_dir())
            .args(["load", "--batch", "10"])
            .arg(&file);
    };
    let mut first = Command::new(binary("store-cli"));
    args(&mut first);
    let mut first = first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some batches, but not all, are committed.
    let metrics = server.metrics_addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = get(metrics, "/metrics").await;
        if sample(&text, "zeolite_last_tid") >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first load committed nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (_, text) = get(metrics, "/metrics").await;
    let at_kill = sample(&text, "zeolite_last_tid") as u64;
    assert!(
        at_kill < lines / batch,
        "the first load finished before it was killed"
    );

    let mut second = Command::new(binary("store-cli"));
    args(&mut second);
    let rerun: CliOutput = second.output().unwrap().into();
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let already = field(&rerun.stdout, "already_applied");
    let applied = field(&rerun.stdout, "applied");
    assert_eq!(already + applied, lines, "{rerun:?}");
    assert!(already >= at_kill * batch, "{rerun:?}");
    // Every batch committed exactly once: one TID each, nothing more.
    let (_, text) = get(metrics, "/metrics").await;
    assert_eq!(sample(&text, "zeolite_last_tid") as u64, lines / batch);
    assert_eq!(
        sample(&text, r#"zeolite_commits_total{outcome="committed"}"#) as u64,
        lines / batch
    );
    let client = server.client().await;
    let all = entries(&client, "l/").await;
    assert_eq!(all.len() as u64, lines);
    assert_eq!(all[&Bytes::from("l/012345")].0, Bytes::from("12345"));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_stdout_restores_with_its_transaction_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(&dir.path().join("a")).await;
    // A client with a fixed instance id: its first transaction is seq 1.
    let mut config = source.client_config();
    config.instance_id = Some(77);
    let before = Client::connect(config).await.unwrap();
    let committed = before.put("k", "v").await.unwrap();
    before.close().await;

    let out = Command::new(binary("store-cli"))
        .arg("--server")
        .arg(source.addr().to_string())
        .arg("--tls-dir")
        .arg(source.tls_dir())
        .args(["backup", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("backup tid=1 "), "{summary}");
    let file = dir.path().join("piped.backup");
    std::fs::write(&file, &out.stdout).unwrap();

    let restored_dir = dir.path().join("b");
    let made = restore_beside(&source, &file, &restored_dir);
    assert_eq!(made.code, 0, "{made:?}");
    assert!(!restored_dir.join("data").join(".restoring").exists());
    // A new cluster id (the source, standalone, had none) unless kept.
    assert!(
        !made.stdout.contains("cluster=0000000000000000"),
        "{made:?}"
    );
    let kept = restore(&[
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        dir.path().join("kept").to_str().unwrap(),
        "--keep-cluster-id",
    ]);
    assert!(kept.stdout.contains("cluster=0000000000000000"), "{kept:?}");
    let restored = ServerProcess::start(&restored_dir).await;
    // The same transaction sent again is answered from its recorded
    // outcome, not applied a second time.
    let mut config = restored.client_config();
    config.instance_id = Some(77);
    let again = Client::connect(config).await.unwrap();
    let replayed = again.put("k", "v").await.unwrap();
    assert!(replayed.replayed, "{replayed:?}");
    assert_eq!(replayed.tid, committed.tid);
    assert_eq!(again.status().await.unwrap().last_tid, committed.tid);
    again.close().await;
}

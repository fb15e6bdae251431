//! `store-cli monitor` and `watch` against real servers: their output, and
//! a paused client process that must not serve its cache on waking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use store_tests::{binary, signal, ServerProcess, EVENT_DEADLINE};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A running `store-cli` with its output read line by line.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn start(server: &ServerProcess, args: &[&str]) -> Running {
        let mut child = Command::new(binary("store-cli"))
            .args(["--server", &server.addr().to_string()])
            .arg("--tls-dir")
            .arg(server.tls_dir())
            .args(["--ping-interval", "300ms", "--stale-after", "1s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, lines }
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(EVENT_DEADLINE, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("the command is still running")
    }

    /// Reads lines until one satisfies `want`; returns it.
    async fn until(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.next_line().await;
            if want(&line) {
                return line;
            }
        }
    }

    /// SIGTERM; the command ends with exit 0.
    async fn stop(mut self) {
        signal(self.pid(), libc::SIGTERM);
        let status = tokio::time::timeout(EVENT_DEADLINE, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0), "interrupted monitor/watch exits 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_prints_each_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let mut monitor = Running::start(&server, &["monitor"]);
    let first = monitor.next_line().await;
    let fields: Vec<&str> = first.split(' ').collect();
    assert_eq!(fields.len(), 3, "T_MS STATE SERVER: {first}");
    fields[0].parse::<u64>().unwrap();
    let live = monitor.until(|l| l.contains(" live ")).await;
    assert!(live.ends_with(&server.addr().to_string()), "{live}");

    server.kill();
    monitor
        .until(|l| l.contains(" stale ") || l.contains(" reconnecting "))
        .await;
    server.restart().await;
    monitor.until(|l| l.contains(" live ")).await;
    monitor.stop().await;

    // JSON shape.
    let mut json = Running::start(&server, &["--json", "monitor"]);
    let line = json.until(|l| l.contains("\"live\"")).await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["t_ms"].is_u64());
    assert_eq!(v["server"], server.addr().to_string());
    assert_eq!(v["epoch"], 1);
    json.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_reads_from_cache_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    server.client().await.put("k", "v1").await.unwrap();
    let mut watch = Running::start(&server, &["watch", "k", "--every", "100"]);
    let first = watch.next_line().await;
    let fields: Vec<&str> = first.split(' ').collect();
    assert_eq!(fields[1..], ["live", "server", "v1"], "{first}");
    watch.until(|l| l.ends_with(" live cache v1")).await;
    server.client().await.put("k", "v2").await.unwrap();
    watch.until(|l| l.ends_with(" v2")).await;
    watch.stop().await;

    let mut json = Running::start(&server, &["--json", "watch", "absent", "--every", "100"]);
    let v: Value = serde_json::from_str(&json.next_line().await).unwrap();
    assert_eq!(v["value"], Value::Null);
    assert_eq!(v["source"], "server");
    assert_eq!(v["state"], "live");
    json.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_serves_nothing_stale_when_it_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let writer = server.client().await;
    writer.put("k", "old").await.unwrap();
    let mut watch = Running::start(&server, &["--json", "watch", "k", "--every", "50"]);
    watch
        .until(|l| l.contains("\"cache\"") && l.contains("\"old\""))
        .await;

    // Freeze the client process past stale_after; the value changes meanwhile.
    signal(watch.pid(), libc::SIGSTOP);
    writer.put("k", "new").await.unwrap();
    // The pause itself is what is tested: it must outlast stale_after (1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(watch.pid(), libc::SIGCONT);

    // Lines printed before the pause may still be in the pipe: find the pause
    // as the gap in t_ms, and check every read after it.
    let mut last_t = 0u64;
    let mut after_pause = Vec::new();
    while after_pause.len() < 20 {
        let line = watch.next_line().await;
        let v: Value = serde_json::from_str(&line).unwrap();
        let t = v["t_ms"].as_u64().unwrap();
        if !after_pause.is_empty() || t >= last_t + 2000 {
            after_pause.push(v);
        }
        last_t = t;
    }
    for v in &after_pause {
        assert_eq!(v["value"], "new", "served after waking: {v}");
    }
    watch.stop().await;
}

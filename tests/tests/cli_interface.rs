//! `store-cli` against a real server: the text and JSON output and the exit
//! codes of DESIGN §8, which scripts rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use store_tests::{cli, CliOutput, ServerProcess};

fn ok(out: CliOutput) -> String {
    assert_eq!(out.code, 0, "stdout: {} stderr: {}", out.stdout, out.stderr);
    out.stdout
}

fn json(out: CliOutput) -> Value {
    let text = ok(out);
    assert_eq!(text.lines().count(), 1, "one object per line: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

/// `committed tid=N txn=<32 hex>:<seq>`, returning N.
fn committed_tid(line: &str) -> u64 {
    let mut words = line.trim().split(' ');
    assert_eq!(words.next(), Some("committed"), "{line}");
    let tid = words
        .next()
        .unwrap()
        .strip_prefix("tid=")
        .unwrap()
        .parse()
        .unwrap();
    let txn = words.next().unwrap().strip_prefix("txn=").unwrap();
    let (client, seq) = txn.split_once(':').unwrap();
    assert_eq!(client.len(), 32);
    assert!(client.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(seq, "1", "a fresh store-cli process commits its first txn");
    tid
}

#[tokio::test]
async fn text_output_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;

    let t1 = committed_tid(&ok(cli(&server, &["put", "greeting", "hello world"], None)));
    assert_eq!(
        ok(cli(&server, &["get", "greeting"], None)),
        "hello world\n"
    );

    let missing = cli(&server, &["get", "nope"], None);
    assert_eq!((missing.code, missing.stdout.as_str()), (1, ""));

    let t2 = committed_tid(&ok(cli(
        &server,
        &["put", "blob", "-"],
        Some(b"from\nstdin"),
    )));
    assert!(t2 > t1);
    assert_eq!(ok(cli(&server, &["get", "blob"], None)), "from\nstdin\n");

    let incr = ok(cli(&server, &["incr", "counter"], None));
    assert!(incr.trim_end().ends_with(" value=1"), "{incr}");
    let incr = ok(cli(&server, &["incr", "counter", "-5"], None));
    assert!(incr.trim_end().ends_with(" value=-4"), "{incr}");

    ok(cli(&server, &["append", "list", "a,"], None));
    ok(cli(&server, &["append", "list", "b,"], None));
    assert_eq!(ok(cli(&server, &["get", "list"], None)), "a,b,\n");

    committed_tid(&ok(cli(&server, &["delete", "blob"], None)));
    assert_eq!(cli(&server, &["get", "blob"], None).code, 1);

    for i in 0..3 {
        ok(cli(
            &server,
            &["put", &format!("user/{i}"), &format!("u{i}")],
            None,
        ));
    }
    assert_eq!(
        ok(cli(&server, &["scan", "user/"], None)),
        "user/0\tu0\nuser/1\tu1\nuser/2\tu2\n"
    );
    assert_eq!(
        ok(cli(&server, &["scan", "user/", "--limit", "2"], None)),
        "user/0\tu0\nuser/1\tu1\n"
    );
    let everything = ok(cli(&server, &["scan"], None));
    assert_eq!(everything.lines().count(), 6, "{everything}");

    let status = ok(cli(&server, &["status"], None));
    let fields: Vec<&str> = status
        .split_whitespace()
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["role", "epoch", "last_tid", "server_id", "sessions"],
        "{status}"
    );
    assert!(
        status.starts_with("role=standalone epoch=1 last_tid="),
        "{status}"
    );

    // Definite failure: nothing applied, exit 3.
    let not_int = cli(&server, &["incr", "greeting"], None);
    assert_eq!(not_int.code, 3, "{}", not_int.stderr);
    assert!(
        not_int.stderr.contains("not a decimal integer"),
        "{}",
        not_int.stderr
    );
    assert_eq!(
        ok(cli(&server, &["get", "greeting"], None)),
        "hello world\n"
    );
}

#[tokio::test]
async fn json_output_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;

    let put = json(cli(&server, &["--json", "put", "k", "v"], None));
    assert!(put["tid"].as_u64().unwrap() >= 1);
    assert!(put["txn"].as_str().unwrap().ends_with(":1"));
    assert_eq!(put["replayed"], Value::Bool(false));
    assert!(put.get("value").is_none());

    let incr = json(cli(&server, &["incr", "n", "41", "--json"], None));
    assert_eq!(incr["value"], 41);

    let get = json(cli(&server, &["--json", "get", "k"], None));
    assert_eq!(get["value"], "v");
    assert_eq!(get["source"], "server");
    assert_eq!(get["state"], "live");
    assert!(get["t_ms"].is_u64());

    ok(cli(
        &server,
        &["put", "bin", "-"],
        Some(&[0xff, 0x00, 0xfe]),
    ));
    let binary = json(cli(&server, &["--json", "get", "bin"], None));
    assert_eq!(binary["value_b64"], "/wD+");
    assert!(binary.get("value").is_none());

    let missing = cli(&server, &["--json", "get", "absent"], None);
    assert_eq!(missing.code, 1);
    let missing: Value = serde_json::from_str(missing.stdout.trim()).unwrap();
    assert_eq!(missing["value"], Value::Null);

    let status = json(cli(&server, &["--json", "status"], None));
    assert_eq!(status["role"], "standalone");
    assert_eq!(status["epoch"], 1);
    assert!(status["last_tid"].as_u64().unwrap() >= 3);
    assert_eq!(status["server_id"].as_str().unwrap().len(), 16);
    assert!(status["sessions"].as_u64().unwrap() >= 1);

    let scan = ok(cli(&server, &["--json", "scan"], None));
    let keys: Vec<String> = scan
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["bin", "k", "n"]);
}

#[tokio::test]
async fn unreachable_server_exits_5_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let tls_dir = server.tls_dir();
    server.kill();
    let out = std::process::Command::new(store_tests::binary("store-cli"))
        .args([
            "--server",
            &server.addr().to_string(),
            "--timeout",
            "1s",
            "--json",
        ])
        .arg("--tls-dir")
        .arg(&tls_dir)
        .args(["put", "k", "v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stdout["state"], "connecting");
    assert!(stdout["error"].as_str().unwrap().contains("unavailable"));

    server.restart().await;
    assert_eq!(
        cli(&server, &["get", "k"], None).code,
        1,
        "the write was never applied"
    );
}

#[tokio::test]
async fn environment_variables_configure_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let out = std::process::Command::new(store_tests::binary("store-cli"))
        .env("ZEOLITE_SERVERS", server.addr().to_string())
        .env("ZEOLITE_TLS_DIR", server.tls_dir())
        .args(["put", "via-env", "yes"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(cli(&server, &["get", "via-env"], None)), "yes\n");
}
